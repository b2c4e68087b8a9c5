"""evaluate.py and attnmt-translate on briefly trained models: scores anyone can reproduce, AER,
heatmaps and the HTML index."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from html.parser import HTMLParser
from xml.etree import ElementTree

import pytest
import torch

from attnmt.eval.evaluate import evaluate

from conftest import ROOT, compose_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.rows = [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "tr" and (attrs.get("id") or "").startswith("s"):
            self.rows += 1


@pytest.mark.slow
def test_beam_evaluation_writes_reproducible_scores_aer_heatmaps_and_index(trained_runs, tmp_path):
    _, run_dir, _ = trained_runs[1]["transformer"]
    out = tmp_path / "eval"
    cfg = compose_config(
        "evaluate", [f"ckpt={run_dir}", "decode.beam_size=5", "eval.num_plots=2", "eval.formats=[png,svg]"], out
    )
    results = evaluate(cfg)
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    device = "cuda:0" if torch.cuda.is_available() else "cpu"  # decode.device=auto
    fast_bf16 = device != "cpu" and torch.cuda.get_device_capability() >= (8, 0)
    assert saved["decoding"] == {"search": "beam", "beam_size": 5, "alpha": 0.6, "max_len_ratio": 1.5, "device": device,
                                 "compute_type": "bfloat16" if fast_bf16 else "float32"}  # decode.compute_type=auto

    # The sacrebleu command on the written files gives the reported figures.
    for metric in ("bleu", "chrf", "ter"):
        cli = subprocess.run(
            [sys.executable, "-m", "sacrebleu", saved["reference_file"], "-i", str(out / "hypotheses.txt"),
             "-m", metric, "-w", "2", "-b"],
            capture_output=True, text=True, check=True,
        )
        assert float(cli.stdout.strip()) == saved[metric]["score"], metric

    # AER against the corpus's gold links, per decoder layer; `aer` is the configured (last) layer's.
    assert len(saved["aer_per_layer"]) == 3 and saved["aer"] == saved["aer_per_layer"][-1]
    assert all(0.0 <= a <= 100.0 for a in saved["aer_per_layer"])
    assert min(saved["aer_per_layer"]) < 60.0  # some layer aligns far better than chance
    links = (out / "alignments.txt").read_text().splitlines()
    assert len(links) == saved["num_sentences"] == 200

    pictures = sorted(p.name for p in (out / "heatmaps").iterdir())
    assert pictures == [
        f"000{i}.cross.{kind}.{fmt}" for i in range(2) for kind in ("grid", "layer3") for fmt in ("png", "svg")
    ]
    for name in pictures:
        path = out / "heatmaps" / name
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == PNG_MAGIC
        else:
            assert ElementTree.parse(path).getroot().tag.endswith("svg")

    page = Links()
    page.feed((out / "index.html").read_text())
    assert page.rows == 200
    assert len(page.images) == 4 and all((out / src).is_file() for src in page.images)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rnn_bahdanau", "transformer"])
def test_greedy_evaluation_of_valid_equals_the_logged_validation_bleu(name, trained_runs, tmp_path):
    train_cfg, run_dir, best_val_bleu = trained_runs[1][name]
    overrides = [f"ckpt={run_dir}", "split=valid", "decode.beam_size=1", "eval.num_plots=0",
                 f"decode.batch_tokens={train_cfg.data.max_tokens}"]
    results = evaluate(compose_config("evaluate", overrides, tmp_path))
    assert results["bleu"]["score"] == pytest.approx(best_val_bleu, abs=1e-4)  # logged as float32


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="decode.device=cuda needs a CUDA device; none here")
@pytest.mark.parametrize("name", ["rnn_bahdanau", "transformer"])
def test_evaluation_on_cuda_equals_the_cpu(name, trained_runs, tmp_path):
    """decode.device=cuda: the model, its search and the alignments run on the GPU (fp32) and give
    the CPU's hypotheses, BLEU and AER (cuDNN's RNN may use TF32: a near tie can flip a few words)."""
    _, run_dir, _ = trained_runs[1][name]
    results = {
        device: evaluate(compose_config("evaluate", [
            f"ckpt={run_dir}", "decode.beam_size=3", "eval.num_plots=1", "eval.formats=[png]",
            f"decode.device={device}", "decode.compute_type=float32"], tmp_path / device))
        for device in ("cpu", "cuda")
    }
    assert results["cuda"]["decoding"]["device"] == "cuda:0" and results["cpu"]["decoding"]["device"] == "cpu"
    lines = {device: (tmp_path / device / "hypotheses.txt").read_text().splitlines() for device in results}
    same = sum(a == b for a, b in zip(lines["cuda"], lines["cpu"]))
    assert len(lines["cuda"]) == len(lines["cpu"]) == 200 and same >= 0.95 * 200, same
    assert results["cuda"]["bleu"]["score"] == pytest.approx(results["cpu"]["bleu"]["score"], abs=1.0)
    assert results["cuda"]["aer"] == pytest.approx(results["cpu"]["aer"], abs=1.0)


@pytest.mark.slow
def test_self_attention_heatmaps(trained_runs, tmp_path):
    _, run_dir, _ = trained_runs[1]["transformer"]
    for attention in ("encoder_self", "decoder_self"):
        cfg = compose_config("evaluate", [f"ckpt={run_dir}", "eval.num_plots=1", f"eval.attention={attention}",
                                          "eval.level=subword", "eval.formats=[pdf]", "decode.beam_size=1"],
                             tmp_path / attention)
        evaluate(cfg)
        files = sorted(p.name for p in (tmp_path / attention / "heatmaps").iterdir())
        assert files == [f"0000.{attention}.grid.pdf", f"0000.{attention}.layer3.pdf"]
        assert (tmp_path / attention / "heatmaps" / files[0]).read_bytes()[:5] == b"%PDF-"


@pytest.mark.slow
def test_heatmaps_of_the_reference_read_teacher_forced(trained_runs, tiny_data_dir, tmp_path):
    """eval.plot_target=reference: the pictures' target axis is the reference (here with a word
    the model never writes), not the hypothesis."""
    _, run_dir, _ = trained_runs[1]["rnn_bahdanau"]
    sources = (tiny_data_dir / "test.en").read_text().splitlines()[:2]
    references = [f"quixotic {line}" for line in (tiny_data_dir / "test.syn").read_text().splitlines()[10:12]]
    (tmp_path / "src.txt").write_text("".join(s + "\n" for s in sources))
    (tmp_path / "ref.txt").write_text("".join(r + "\n" for r in references))

    def labels(target: str) -> tuple[list[str], list[str]]:
        out = tmp_path / target
        evaluate(compose_config("evaluate", [
            f"ckpt={run_dir}", f"src_file={tmp_path / 'src.txt'}", f"ref_file={tmp_path / 'ref.txt'}",
            "decode.beam_size=1", "eval.num_plots=1", f"eval.plot_target={target}", "eval.formats=[svg]",
            "eval.level=word",
        ], out))
        (svg,) = (out / "heatmaps").glob("0000.cross*.svg")
        # Matplotlib writes each text of an SVG beside its glyphs as a comment: the axis labels.
        return (
            re.findall(r"<!-- (.*?) -->", svg.read_text()),
            (out / "hypotheses.txt").read_text().splitlines()[0].split(),
        )

    reference_labels, _ = labels("reference")
    hypothesis_labels, hypothesis = labels("hypothesis")
    assert all(word in reference_labels for word in references[0].split())
    assert "quixotic" not in hypothesis_labels and all(word in hypothesis_labels for word in hypothesis)


def translate(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "attnmt.deploy.translate", *args], input=stdin, capture_output=True, text=True, cwd=ROOT,
    )


@pytest.mark.slow
def test_translate_command_in_a_pipeline(trained_runs, tiny_data_dir, tmp_path):
    _, run_dir, _ = trained_runs[1]["rnn_bahdanau"]
    sources = (tiny_data_dir / "test.en").read_text().splitlines()[:30]
    plain = translate(f"ckpt={run_dir}", "beam_size=3", stdin="\n".join(sources) + "\n")
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert len(lines) == 30 and all(lines)

    nbest = translate(f"ckpt={run_dir}", "beam_size=3", "n_best=3", "alignments=true", stdin="\n".join(sources[:5]))
    assert nbest.returncode == 0, nbest.stderr
    rows = [line.split(" ||| ") for line in nbest.stdout.splitlines()]
    assert [int(r[0]) for r in rows] == [i for i in range(5) for _ in range(3)]
    assert [r[1] for r in rows[::3]] == lines[:5]  # the 1-best of the n-best list is the plain output
    for i in range(5):
        hyps = rows[3 * i : 3 * i + 3]
        scores = [float(r[2]) for r in hyps]
        assert all(math.isfinite(x) and x < 0 for x in scores) and scores == sorted(scores, reverse=True)
        # three different hypotheses (two token sequences may detokenize to the same text)
        assert len({(r[1], r[2]) for r in hyps}) == 3
        for _, translation, _, links in hyps:
            pairs = [tuple(map(int, link.split("-"))) for link in links.split()]
            # Word links source-target: every target word is linked (argmax), each within both sentences.
            assert {j for _, j in pairs} == set(range(len(translation.split())))
            assert all(0 <= s < len(sources[i].split()) for s, _ in pairs)

    # input=FILE reads the same sentences from a file (CRLF line ends are dropped).
    source_file = tmp_path / "sources.txt"
    source_file.write_bytes("".join(s + "\r\n" for s in sources).encode())
    from_file = translate(f"ckpt={run_dir}", "beam_size=3", f"input={source_file}")
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout == plain.stdout


def test_translate_help_and_bad_arguments():
    helped = translate("--help")
    assert helped.returncode == 0 and "ckpt=" in helped.stdout and "beam_size" in helped.stdout
    for args, message in (
        (["beam_size=3"], "ckpt is required"),
        (["ckpt=x", "beam=3"], "beam: not a key of attnmt-translate"),
        (["ckpt=x", "oops"], "arguments are key=value"),
        (["ckpt=/nonexistent/run"], "no such checkpoint file or run folder"),
        (["ckpt=/nonexistent/run", "beam_size=2", "n_best=3"], "n_best=3 must be between 1 and beam_size=2"),
        (["ckpt=/nonexistent/run", "input=/nonexistent/sources.txt"], "/nonexistent/sources.txt: no such file"),
    ):
        done = translate(*args, stdin="a b c\n")
        assert done.returncode == 2, done
        assert done.stderr.strip().splitlines() == [done.stderr.strip()] and message in done.stderr, done.stderr
