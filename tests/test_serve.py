"""attnmt-serve: translations equal attnmt-translate's, attention rows sum to 1, bad requests get a
4xx and the server keeps serving, requests arriving together are batched, and the page shows a
heatmap in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from attnmt.translate import DecodeSettings, TranslateSettings, translate_lines

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("httpx", reason="Starlette's test client needs httpx (in the dev extra)")

from starlette.testclient import TestClient

from attnmt.serve import ServeSettings, create_app, load_backend

from conftest import serving


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
    """attnmt-serve's app under uvicorn on a loopback port, in a thread."""
    run_dir, _ = exported_transformer
    with serving(load_backend(str(run_dir)), batch_wait_ms=200) as port:
        yield f"http://127.0.0.1:{port}"


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
    sentences = (tiny_data_dir / "test.en").read_text().splitlines()[:8]
    before = health(live_server)
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda s: post(live_server, {"text": [s], "beam_size": 1}), sentences))
    after = health(live_server)
    assert after["requests"] - before["requests"] == 8 and after["batches"] - before["batches"] < 8, (before, after)
    alone = post(live_server, {"text": sentences, "beam_size": 1})["translations"]
    assert [r["translations"][0] for r in replies] == alone


@pytest.mark.slow
def test_the_page_shows_a_heatmap_in_headless_chromium(live_server, tiny_data_dir, tmp_path):
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
