"""attnmt-serve: translations equal attnmt-translate's, attention is the model's cross-attention merged
to words (rows summing to 1), bad requests get a 4xx and the server keeps serving, requests arriving
together are batched, and the page shows a heatmap in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from attnmt.decode.settings import DecodeSettings
from attnmt.deploy.translate import TranslateSettings, translate_lines

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("httpx", reason="Starlette's test client needs httpx (in the dev extra)")

from starlette.testclient import TestClient

from attnmt.deploy.serve import ServeSettings, create_app, load_backend

from conftest import MODELS, serving, untrained_model


@pytest.fixture(scope="module", params=["pytorch", "ctranslate2"])
def served(request, exported_transformer, tiny_data_dir):
    run_dir, folders = exported_transformer
    ckpt = str(run_dir if request.param == "pytorch" else folders["float32"])
    with TestClient(create_app(load_backend(ckpt), ServeSettings(ckpt=ckpt)), base_url="http://localhost") as client:
        yield ckpt, client, (tiny_data_dir / "test.en").read_text().splitlines()


@pytest.mark.slow
def test_translations_equal_attnmt_translate(served):
    ckpt, client, sentences = served
    lines = sentences[:12] + [""]
    reply = client.post("/translate", json={"text": lines, "beam_size": 5})
    assert reply.status_code == 200, reply.text
    assert reply.json()["translations"] == translate_lines(
        TranslateSettings(ckpt=ckpt), DecodeSettings(beam_size=5), lines
    )


@pytest.mark.slow
def test_attention_rows_sum_to_one(served):
    _, client, sentences = served
    reply = client.post("/translate", json={"text": sentences[20:24], "beam_size": 1, "attention": True}).json()
    for sentence, translation, a in zip(sentences[20:24], reply["translations"], reply["attention"]):
        assert a["source"] == sentence.split() and a["target"] == translation.split()
        assert len(a["weights"]) == len(a["layers"]) and all(len(h) == len(a["heads"]) for h in a["weights"])
        for layer in a["weights"]:
            for head in layer:
                assert len(head) == len(a["target"])
                for row in head:
                    assert len(row) == len(a["source"]) and min(row) >= 0 and sum(row) == pytest.approx(1.0, abs=1e-3)
    pytorch = client.get("/metadata").json()["backend"] == "pytorch"
    expected = (3, 5) if pytorch else (1, 1)  # all layers, mean + 4 heads; or the export's one matrix
    assert (len(a["layers"]), len(a["heads"])) == expected


@pytest.fixture(scope="module", params=MODELS)
def untrained_backend(request, tmp_path_factory):
    """attnmt-serve's PyTorch backend over an untrained model (quick: no training, no export)."""
    from attnmt.decode.backends import TorchBackend

    model, tokenizer = untrained_model(tmp_path_factory.mktemp("spm"), request.param)
    config = {"data": {}, "model": {"_target_": f"attnmt.models.{request.param}"}}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("attnmt.decode.checkpoint.load_for_decoding", lambda _: (model, tokenizer, config, Path("x")))
        return TorchBackend("x")


def recorded_decoding(backend, monkeypatch) -> list:
    """``(sources, results)`` of each call of ``backend.decode`` (one per batch the server decodes)."""
    calls, decode = [], backend.decode

    def spy(sources, *args):
        results = decode(sources, *args)
        calls.append((sources, results))
        return results

    monkeypatch.setattr(backend, "decode", spy)
    return calls


def words_of(pieces: list[str]) -> list[int | None]:
    """The word of each piece, written out for this test: ``▁`` starts a word; ``<s>``, ``</s>`` and
    ``<pad>`` belong to none."""
    out, word = [], -1
    for piece in pieces:
        if piece in ("<s>", "</s>", "<pad>"):
            out.append(None)
            continue
        word += piece.startswith("\u2581") or word < 0
        out.append(word)
    return out


def merged_to_words(w: np.ndarray, rows: list[int | None], cols: list[int | None]) -> np.ndarray:
    """Subword attention ``(T, S)`` at word level: a target word's row is the mean of its pieces'
    rows, a source word's weight the sum of its pieces' columns; ``</s>`` dropped; rows to sum 1."""
    n_rows, n_cols = max(r for r in rows if r is not None) + 1, max(c for c in cols if c is not None) + 1
    out = np.zeros((n_rows, n_cols))
    for word in range(n_rows):
        pieces = [t for t, r in enumerate(rows) if r == word]
        mean = w[pieces].mean(0)
        for c, col in enumerate(cols):
            if col is not None:
                out[word, col] += mean[c]
    return out / out.sum(1, keepdims=True)


def test_attention_is_the_models_cross_attention_merged_to_words(untrained_backend, monkeypatch):
    """The server's pictures against the model's own cross-attention, read here from the model and
    merged to words here: every layer, the mean of the heads, then each head. The search is a
    stand-in that gives chosen outputs (an untrained model's own are one piece repeated)."""
    from attnmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
    from attnmt.decode.hypothesis import Hypothesis

    backend = untrained_backend
    model, tok = backend.model, backend.tokenizer
    lines = ["w1234 x2 y12", "w7 x0 y7 w1999 x3", "y5 w42"]
    targets = ["x5 w1777 y3", "y9 w42 w1500 x1", "w7 x0"]
    sources = [ids + [EOS_ID] for ids in tok.encode_src(lines)]
    hyps = tok.encode_tgt(targets)
    output = {tuple(s): h for s, h in zip(sources, hyps)}
    monkeypatch.setattr(backend, "translate", lambda dataset, settings, *args, **keys: [
        [Hypothesis(output[tuple(s)], 0.0, 0.0)] for s in dataset.src])
    with TestClient(create_app(backend, ServeSettings(ckpt="x")), base_url="http://localhost") as client:
        reply = client.post("/translate", json={"text": lines, "beam_size": 1, "attention": True})
    assert reply.status_code == 200, reply.text
    reply = reply.json()
    assert reply["translations"] == targets
    # The model reads each output (<s> first) teacher-forced: cross-attention (B, L, H, T, S).
    src = torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s in sources], True, PAD_ID)
    tgt_in = torch.nn.utils.rnn.pad_sequence([torch.tensor([BOS_ID] + h) for h in hyps], True, PAD_ID)
    with torch.no_grad():
        cross = model.decode(model.encode(src, src != PAD_ID), tgt_in, need_attention=True)[1]["cross"].double()
    layers, heads = cross.shape[1], cross.shape[2]
    for s, h, line, target in zip(sources, hyps, lines, targets):  # words of several pieces
        assert len(s) > len(line.split()) + 1 and len(h) > len(target.split())
    for b, (line, target, picture) in enumerate(zip(lines, targets, reply["attention"])):
        assert picture["source"] == line.split() and picture["target"] == target.split()
        assert (len(picture["layers"]), len(picture["heads"])) == (layers, heads + 1)
        rows, cols = words_of(tok.tgt_pieces(hyps[b]) + ["</s>"]), words_of(tok.src_pieces(sources[b]))
        raw = cross[b, :, :, : len(hyps[b]) + 1, : len(sources[b])].numpy()  # (L, H, T + 1, S)
        assert (raw.max(-1) - raw.min(-1)).min() > 0.005  # no row uniform: other weights would show
        for layer in range(layers):
            expected = [raw[layer].mean(0)] + list(raw[layer])  # the mean of the heads, then each
            for head, w in enumerate(expected):
                got = np.array(picture["weights"][layer][head])
                np.testing.assert_allclose(got, merged_to_words(w, rows, cols), rtol=0, atol=2e-5,
                                           err_msg=f"sentence {b}, layer {layer}, head {head}")


@pytest.mark.parametrize("untrained_backend", ["rnn_bahdanau"], indirect=True)
def test_requests_arriving_together_are_decoded_in_fewer_batches(untrained_backend, monkeypatch):
    """Quick twin of the trained model's test below: eight one-sentence requests arriving together
    share batches (fewer decoder calls than requests, one holding several of them), and /health
    counts the decoder calls that were made."""
    backend = untrained_backend
    decoded = recorded_decoding(backend, monkeypatch)  # before the server takes backend.decode
    lines = [f"w{i} x{i % 7} y{i % 13}" for i in range(100, 108)]
    with serving(backend, batch_wait_ms=300) as port:
        url = f"http://127.0.0.1:{port}"
        before = health(url)
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda s: post(url, {"text": [s], "beam_size": 1}), lines))
        after = health(url)
    sizes = [len(sources) for sources, _ in decoded]
    assert sum(sizes) == 8 and 1 <= len(sizes) < 8 and max(sizes) > 1, sizes
    assert after["requests"] - before["requests"] == 8
    assert after["batches"] - before["batches"] == len(sizes), (before, after, sizes)
    # Each request got its own sentence's translation back.
    by_source = {tuple(s): item["translation"] for sources, items in decoded for s, item in zip(sources, items)}
    assert [r["translations"][0] for r in replies] == [by_source[tuple(s)] for s in backend.encode(lines)]
    assert all(r["translations"][0] for r in replies)


@pytest.mark.slow
def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(served):
    _, client, sentences = served
    bad = [
        b"", b"{", b"[1, 2]", b'{"text": []}', b'{"text": [1]}', b'{"text": "x", "beam_size": 0}',
        b'{"text": ["a"], "beam_size": 2.5}', b'{"text": ["a"], "attention": "yes"}', b'{"text": ["a"], "colour": 1}',
        json.dumps({"text": ["a"] * 65}).encode(), json.dumps({"text": ["a " * 600]}).encode(),
        json.dumps({"text": ["a\nb"]}).encode(), b"\xff\xfe", b"x" * 300_000,
        b'{"text": ["a \\ud800 b"]}', b'{"text": ["a"], "beam_size": ' + b"9" * 5000 + b"}",
        b"[" * 50_000 + b"]" * 50_000, json.dumps({"text": ["a " * 400] * 20, "beam_size": 16}).encode(),
    ]
    for body in bad:
        reply = client.post("/translate", content=body, headers={"Content-Type": "application/json"})
        assert 400 <= reply.status_code < 500, (body[:40], reply.status_code)
        reason = reply.json()["error"]
        assert reason and "\n" not in reason
        good = client.post("/translate", json={"text": sentences[:1], "beam_size": 1})
        assert good.status_code == 200 and good.json()["translations"][0]
    assert client.get("/health").json()["status"] == "ok"
    metadata = client.get("/metadata").json()
    assert metadata["languages"] == {"source": "en", "target": "syn"}
    assert not any("/" in str(metadata.get(k, "")) for k in ("checkpoint", "export")), metadata  # names, not paths


@pytest.mark.slow
def test_the_page_needs_nothing_from_the_network(served):
    _, client, _ = served
    page = client.get("/")
    assert page.status_code == 200 and "<script>" in page.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)


@pytest.fixture(scope="module")
def live_server(exported_transformer):
    """attnmt-serve's app under uvicorn on a loopback port, in a thread; and the number of sentences
    of each batch its backend decoded."""
    run_dir, _ = exported_transformer
    backend, sizes = load_backend(str(run_dir)), []
    decode = backend.decode

    def counted(sources, *args):
        sizes.append(len(sources))
        return decode(sources, *args)

    backend.decode = counted
    with serving(backend, batch_wait_ms=200) as port:
        yield f"http://127.0.0.1:{port}", sizes


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url + "/translate", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.loads(reply.read())


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health") as reply:
        return json.loads(reply.read())


@pytest.mark.slow
def test_requests_arriving_together_are_batched(live_server, tiny_data_dir):
    url, sizes = live_server
    sentences = (tiny_data_dir / "test.en").read_text().splitlines()[:8]
    before, done = health(url), len(sizes)
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda s: post(url, {"text": [s], "beam_size": 1}), sentences))
    after = health(url)
    batches = sizes[done:]  # what the decoder was given: fewer batches than requests, some shared
    assert sum(batches) == 8 and 1 <= len(batches) < 8 and max(batches) > 1, batches
    assert after["requests"] - before["requests"] == 8, (before, after)
    assert after["batches"] - before["batches"] == len(batches), (before, after, batches)
    alone = post(url, {"text": sentences, "beam_size": 1})["translations"]
    assert [r["translations"][0] for r in replies] == alone


@pytest.mark.slow
def test_the_page_shows_a_heatmap_in_headless_chromium(live_server, tiny_data_dir, tmp_path):
    live_server, _ = live_server
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium, chromium-browser or google-chrome on PATH")
    sentence = (tiny_data_dir / "test.en").read_text().splitlines()[1]
    url = f"{live_server}/?text={urllib.parse.quote(sentence)}"  # the page translates ?text= on load
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}",
         "--virtual-time-budget=20000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=False,
    ).stdout
    table = re.search(r'<table class="heatmap">(.*?)</table>', dom, re.DOTALL)
    assert table, dom[-2000:]
    translation = post(live_server, {"text": [sentence], "beam_size": 5})["translations"][0]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table.group(1), re.DOTALL)
    assert len(rows) == 1 + len(translation.split())
    assert all(len(re.findall(r"<td", r)) == len(sentence.split()) for r in rows[1:])
    assert 'class="row">' + translation.split()[0] + "<" in table.group(1)
