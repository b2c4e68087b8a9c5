"""attnmt-translate streams its input: chunks read lazily, translated by a backend loaded once,
written in input order (global line indices) and flushed; a bad line or a Ctrl-C keeps the chunks
already written. Fast tests use a fake backend; the slow ones compare real models' streamed output
with :func:`attnmt.deploy.translate.translate_lines` on the whole input."""

from __future__ import annotations

import io
import logging
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from attnmt.data.io import decode_lines, iter_lines, iter_stdin, read_lines, read_stdin, split_lines
from attnmt.decode.settings import DecodeSettings
from attnmt.deploy.translate import TranslateSettings, translate_lines
from attnmt.deploy.translate import main as translate_main
from attnmt.deploy.translate_stream import Interrupted, translate_stream
from attnmt.errors import DataError

from conftest import MODELS, untrained_model

CHUNK = 7


def fake_backend(calls: list, interrupt_on_chunk: int | None = None):
    """A translate function that upper-cases each line behind its global index, and records
    (index of the first line, number of lines) per call."""

    def translate(lines: list[str], first: int) -> list[str]:
        calls.append((first, len(lines)))
        if len(calls) == interrupt_on_chunk:
            raise KeyboardInterrupt
        return [f"{first + i} {line.upper()}" for i, line in enumerate(lines)]

    return translate


def expected_rows(lines: list[str]) -> list[str]:
    return [f"{i} {line.upper()}" for i, line in enumerate(lines)]


def run_main(argv: list[str], stdin: bytes, monkeypatch, capsys, calls: list, interrupt_on_chunk: int | None = None):
    """``attnmt-translate`` on ``stdin`` with the fake backend: (exit status, stdout rows, stderr)."""
    loads = []

    def load(args, settings, progress=True):
        loads.append(args.ckpt)
        return SimpleNamespace(translate=fake_backend(calls, interrupt_on_chunk))

    monkeypatch.setattr("attnmt.deploy.translate.Translator", load)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = 0
    try:
        translate_main(["ckpt=x", *argv])
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    assert len(loads) <= 1, loads  # the model is loaded once, whatever the number of chunks
    return code, captured.out.split("\n")[:-1], captured.err


# -- reading ---------------------------------------------------------------------------------------
TRICKY = b"a b\r\n\r\n  \t\nnul \x00 kept\nlone \r cr\ncaf\xc3\xa9\r\n\nlast without newline\r"


def test_lines_are_decoded_one_by_one_as_the_whole_input_is(tmp_path, monkeypatch, caplog):
    whole, crlf = split_lines(TRICKY, "x")
    assert crlf == 4
    assert list(decode_lines(io.BytesIO(TRICKY), "x")) == whole
    (tmp_path / "in.txt").write_bytes(TRICKY)
    assert list(iter_lines(tmp_path / "in.txt")) == read_lines(tmp_path / "in.txt") == whole
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(TRICKY)))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert list(iter_stdin()) == whole
    assert [r.getMessage() for r in caplog.records] == ["<stdin>: 4 of 8 lines end in CRLF; read without the CR"]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(TRICKY)))
    assert read_stdin() == whole


def test_a_bad_line_is_an_error_when_it_is_reached():
    lines = decode_lines(io.BytesIO(b"one\ntwo\r\nth\xffree\nfour\n"), "<stdin>")
    assert next(lines) == "one" and next(lines) == "two"
    with pytest.raises(DataError, match=r"^<stdin>: line 3 is not valid UTF-8$"):
        next(lines)


# -- the loop, with a fake backend -----------------------------------------------------------------
def test_chunks_are_written_in_input_order_with_global_indices():
    lines = [f"line {i}" for i in range(3 * CHUNK + 2)]
    calls, loads, out = [], [], io.StringIO()

    def load():
        loads.append(1)
        return fake_backend(calls)

    assert translate_stream(lines, load, CHUNK, out) == len(lines)
    assert out.getvalue().split("\n") == expected_rows(lines) + [""]
    assert calls == [(0, 7), (7, 7), (14, 7), (21, 2)] and loads == [1]


def test_empty_input_loads_nothing():
    out = io.StringIO()
    assert translate_stream(iter([]), lambda: pytest.fail("the model was loaded"), CHUNK, out) == 0
    assert out.getvalue() == ""


def test_input_is_read_lazily_and_output_appears_before_it_ends():
    events = []

    class Out(io.StringIO):
        def write(self, text):
            events.append(f"write {text.count(chr(10))} rows")
            return super().write(text)

    def lines():
        for i in range(2 * CHUNK + 6):
            events.append(f"read {i}")
            yield f"line {i}"
        raise RuntimeError("the input broke off")

    out = Out()
    with pytest.raises(RuntimeError):
        translate_stream(lines(), lambda: fake_backend([]), CHUNK, out)
    assert out.getvalue().split("\n") == expected_rows([f"line {i}" for i in range(2 * CHUNK)]) + [""]
    # Each chunk is written before the first line of the next is read.
    assert events[:CHUNK + 2] == [f"read {i}" for i in range(CHUNK)] + ["write 7 rows", "read 7"]
    assert events.index("write 7 rows", CHUNK + 1) == 2 * CHUNK + 1


def test_a_bad_line_keeps_the_chunks_before_it(monkeypatch, capsys):
    k = 2 * CHUNK + 3  # 1-based: a line of the third chunk
    raw = b"".join(f"line {i}\n".encode() for i in range(1, k)) + b"caf\xe9\n" + b"more\n"
    calls = []
    code, out, err = run_main([f"chunk_lines={CHUNK}"], raw, monkeypatch, capsys, calls)
    assert code == 2 and "Traceback" not in err
    assert err.strip() == f"error: <stdin>: line {k} is not valid UTF-8 (the output of the first 14 lines is written)"
    assert out == expected_rows([f"line {i}" for i in range(1, 2 * CHUNK + 1)])
    assert calls == [(0, 7), (7, 7)]


def test_a_bad_line_in_the_first_chunk_is_reported_before_the_model_loads(monkeypatch, capsys):
    calls = []
    code, out, err = run_main([f"chunk_lines={CHUNK}"], b"one\ntw\xf0o\n", monkeypatch, capsys, calls)
    assert code == 2 and out == [] and calls == []
    assert err.strip() == "error: <stdin>: line 2 is not valid UTF-8"


def test_ctrl_c_keeps_the_finished_chunks_and_exits_130(monkeypatch, capsys):
    raw = b"".join(f"line {i}\n".encode() for i in range(5 * CHUNK))
    calls = []
    code, out, err = run_main([f"chunk_lines={CHUNK}"], raw, monkeypatch, capsys, calls, interrupt_on_chunk=3)
    assert code == 130
    assert out == expected_rows([f"line {i}" for i in range(2 * CHUNK)])
    assert err.splitlines() == ["interrupted: the output of the first 14 input lines is written"]
    assert calls == [(0, 7), (7, 7), (14, 7)]


def test_ctrl_c_while_a_chunk_is_written_lets_it_finish(request):
    """SIGINT arriving in the middle of a chunk's write: the chunk is written whole, then the stop."""

    class Out(io.StringIO):
        writes = 0

        def write(self, text):
            self.writes += 1
            half = len(text) // 2
            super().write(text[:half])
            if self.writes == 3:  # halfway through the third chunk
                signal.raise_signal(signal.SIGINT)
            return super().write(text[half:])

    # Python's own Ctrl-C handler, which translate_stream takes over: a process started in the
    # background by a shell inherits SIGINT ignored, and then there is no Ctrl-C to handle.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    lines = [f"line {i}" for i in range(5 * CHUNK)]
    out = Out()
    with pytest.raises(Interrupted) as stopped:
        translate_stream(lines, lambda: fake_backend([]), CHUNK, out)
    assert stopped.value.lines == 3 * CHUNK
    assert out.getvalue().split("\n") == expected_rows(lines[: 3 * CHUNK]) + [""]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# -- real models -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """An untrained Transformer and a small tokenizer: quick, and every line gets a (long) output."""
    return untrained_model(tmp_path_factory.mktemp("spm"), "transformer")


@pytest.mark.parametrize("argv", [[], ["n_best=2", "scores=true"]], ids=["plain", "n_best=2 scores"])
def test_an_untrained_models_streamed_output_equals_the_whole_input_at_once(argv, untrained, monkeypatch, capsys):
    """The real Translator (quick: an untrained model, read through stdin) across five chunks."""
    model, tokenizer = untrained
    monkeypatch.setattr("attnmt.decode.checkpoint.load_for_decoding",
                        lambda _: (model, tokenizer, {"data": {}}, Path("x")))
    raw = b"".join(f"w{i} x{i % 7} y{i % 13}".encode() + (b"\r\n" if i % 3 else b"\n") + (b" \n" if i % 8 == 2 else b"")
                   for i in range(30))
    lines, _ = split_lines(raw, "raw")
    n_best = 2 if argv else 1
    whole = translate_lines(TranslateSettings(ckpt="x", scores=bool(argv)), DecodeSettings(beam_size=2, n_best=n_best),
                            lines)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    translate_main(["ckpt=x", "beam_size=2", f"chunk_lines={CHUNK}", *argv])
    assert len(lines) > 4 * CHUNK
    assert same_rows(capsys.readouterr().out.split("\n")[:-1], whole, scored=bool(argv))
    if argv:  # n_best rows per line (a blank line has one), indexed by input line
        assert [int(r.split(" ||| ")[0]) for r in whole] == [
            i for i, line in enumerate(lines) for _ in range(n_best if line.strip() else 1)]


def mixed_input(source_file, path) -> None:
    """Test sentences with blank, whitespace-only and CRLF lines among them."""
    sentences = source_file.read_bytes().splitlines()[:30]
    rows = []
    for i, s in enumerate(sentences):
        rows.append(s + (b"\r\n" if i % 4 == 1 else b"\n"))
        if i % 9 == 3:
            rows.append(b"\n" if i % 2 else b"  \t\r\n")
    path.write_bytes(b"".join(rows))


def streamed(argv: list[str], capsys) -> list[str]:
    capsys.readouterr()
    translate_main([*argv, f"chunk_lines={CHUNK}"])
    return capsys.readouterr().out.split("\n")[:-1]


def same_rows(streamed: list[str], whole: list[str], scored: bool) -> bool:
    """Equal rows, but for a score's last digit: a sentence batched with other neighbours (its
    chunk's lines, not the whole input's) is decoded in other padded shapes, and float32 sums in
    another order can move a score by 1e-6, enough to round its 4th decimal the other way (seen
    with greedy decoding). Indices, translations and alignments are compared exactly."""
    if not scored:
        return streamed == whole
    rows = [(r.split(" ||| "), w.split(" ||| ")) for r, w in zip(streamed, whole)]
    return len(streamed) == len(whole) and all(
        r[:2] + r[3:] == w[:2] + w[3:] and abs(float(r[2]) - float(w[2])) <= 1.5e-4 for r, w in rows
    )


OPTIONS = {"plain": {}, "n_best=2 scores": {"n_best": 2, "scores": True}, "alignments": {"alignments": True}}


@pytest.mark.slow
@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
@pytest.mark.parametrize("model", MODELS)
def test_streamed_output_equals_the_whole_input_translated_at_once(model, options, trained_runs, tiny_data_dir,
                                                                   tmp_path, capsys):
    mixed_input(tiny_data_dir / "test.en", tmp_path / "in.txt")
    lines = read_lines(tmp_path / "in.txt")
    assert len(lines) > 4 * CHUNK and "" in lines and "\r" not in "".join(lines)
    run_dir = trained_runs[1][model][1]
    settings = DecodeSettings(beam_size=3, n_best=options.get("n_best", 1))
    args = TranslateSettings(ckpt=str(run_dir), **{k: v for k, v in options.items() if k != "n_best"})
    whole = translate_lines(args, settings, lines)
    argv = [f"ckpt={run_dir}", f"input={tmp_path / 'in.txt'}", "beam_size=3",
            *(f"{k}={str(v).lower()}" for k, v in options.items())]
    assert same_rows(streamed(argv, capsys), whole, scored="n_best" in options)
    if "n_best" in options:  # indices count input lines, across chunks; a blank line has one row
        indices = [int(r.split(" ||| ")[0]) for r in whole]
        assert sorted(set(indices)) == list(range(len(lines))) and indices == sorted(indices)
        assert all(indices.count(i) == 1 for i, line in enumerate(lines) if not line.strip())
        assert sum(indices.count(i) == 2 for i in range(len(lines))) > len(lines) // 2  # n_best, alignments or not


@pytest.mark.slow
def test_streamed_output_of_an_export_equals_the_whole_input_translated_at_once(exported_transformer, tiny_data_dir,
                                                                                tmp_path, capsys):
    mixed_input(tiny_data_dir / "test.en", tmp_path / "in.txt")
    lines = read_lines(tmp_path / "in.txt")
    folder = exported_transformer[1]["float32"]
    whole = translate_lines(TranslateSettings(ckpt=str(folder), scores=True), DecodeSettings(beam_size=3, n_best=2),
                            lines)
    argv = [f"ckpt={folder}", f"input={tmp_path / 'in.txt'}", "beam_size=3", "n_best=2", "scores=true"]
    assert same_rows(streamed(argv, capsys), whole, scored=True)


def test_a_reader_that_stops_early_ends_the_run_quietly(tmp_path):
    """``attnmt-translate ... | head -1``: exit status 141 (SIGPIPE's), no traceback."""
    import subprocess
    import textwrap

    source = tmp_path / "in.txt"
    source.write_text("a line to translate\n" * 200_000)
    script = textwrap.dedent("""
        from types import SimpleNamespace
        import attnmt.deploy.translate as t
        t.Translator = lambda args, settings, progress=True: SimpleNamespace(
            translate=lambda lines, first: [line.upper() for line in lines])
        t.main(["ckpt=x", "chunk_lines=1000", "input=" + __import__("sys").argv[1]])
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, str(source)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"A LINE TO TRANSLATE\n"
    proc.stdout.close()  # the reader goes, as head does
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141 and "Traceback" not in err, err
