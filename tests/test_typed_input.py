"""Every key of every command refuses a value of the wrong type, and a number out of range: exit
status 2, one line ``error: KEY=VALUE ...`` naming the key, no traceback, before any model loads.

The table is generated from the schemas, so a new key is tested the moment it exists:

* attnmt-translate, attnmt-average: the fields of their settings dataclasses;
* evaluate.py: its own keys (``EvaluateSettings``) and every ``_target_`` node of its config;
* train.py: every ``_target_`` node of the composed config, for every option of every group
  (``model=...``, ``data=...``, ``trainer=...``, ...), each key against the annotation of its
  target constructor's parameter (Lightning's ``Trainer`` and callbacks included);
* attnmt-compare takes one positional folder (any text): its usage errors are tested below.

The wrong values are derived here from each annotation (text for a number, ``1.5`` for an int,
``3`` for a bool, a list for a string, a word outside the choices, ``0`` or ``-1`` below a bound).

Keys accepted on purpose, with no wrong value to try (:data:`ACCEPTED`):

* on the console commands, text keys that name a file or folder (``ckpt``, ``input``, ``out``):
  any text is a path, and a path that does not exist is its own one-line error;
* train.py's own keys (``task_name``, ``resume``, ``optimized_metric``), ``paths.*`` and
  ``data.train_prefix`` (a path or a list of paths): names and paths; ``seed`` is checked where it
  is used (``data.seed: ${seed}``, tested below);
* nodes given as ``_target_`` nodes (``model.attention``, ``trainer.plugins``): each of their keys
  is in the table instead;
* numbers whose range only the constructor's body checks, not its annotation (Lightning's own):
  their type is tested here, their range where the constructor runs.

train.py keys are tested in this process (the composed config, changed in place, given to
train.py's ``main`` with ``train`` replaced by a tripwire); a few cases run the real entry points
in a subprocess to prove the wiring.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import io
import subprocess
import sys
import types
import typing
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from attnmt.decode.settings import DecodeSettings
from attnmt.deploy.export import ExportSettings
from attnmt.deploy.export import main as export_main
from attnmt.deploy.serve import ServeSettings
from attnmt.deploy.serve import main as serve_main
from attnmt.deploy.translate import TranslateSettings
from attnmt.deploy.translate import main as translate_main
from attnmt.errors import ConfigError
from attnmt.eval.evaluate import EvalSettings, EvaluateSettings
from attnmt.train.average import AverageSettings
from attnmt.train.average import main as average_main
from attnmt.utils.schema import NON_EMPTY, Bound, Gt, Le, check_value, parameters, parse_text

from conftest import CONF, ROOT, compose_config, untrained_model

NoneType = type(None)

# -- deriving wrong values from an annotation ---------------------------------------------------
def _strip(ann: Any) -> tuple[Any, list]:
    marks: list = []
    while get_origin(ann) is Annotated:
        ann, *extra = get_args(ann)
        marks += extra
    return ann, marks


def wrong_values(ann: Any, defaults: dict[str, Any], console: bool) -> list[Any]:
    """Values that ``ann`` does not allow: one of a wrong type per kind it does not take, and one
    past each bound. Empty when nothing can be said (a class, a callable)."""
    ann, marks = _strip(ann)
    members = get_args(ann) if get_origin(ann) in (Union, types.UnionType) else (ann,)
    kinds, choices = set(), []
    for member in members:
        member, more = _strip(member)
        marks += more
        if member in (int, float, bool, str, NoneType):
            kinds.add(member)
        elif get_origin(member) is Literal:
            choices += get_args(member)
        elif member in (list, tuple) or get_origin(member) in (list, tuple):
            kinds.add(list)
        elif member is dict or get_origin(member) is dict:
            kinds.add(dict)
    if not kinds - {NoneType} and not choices:
        return []
    out: list[Any] = []
    if str not in kinds:
        out.append("abc")
    elif list not in kinds and not console:  # console text is any text
        out.append([1, 2])
    if int in kinds and float not in kinds:
        out.append(1.5)
    if bool in kinds and int not in kinds:
        out.append(3)
    for mark in marks:
        if isinstance(mark, Bound):
            limit = defaults.get(mark.limit) if isinstance(mark.limit, str) else mark.limit
            out.append({">=": limit - 1, ">": limit, "<=": limit + 1, "<": limit}[mark.op])
        elif mark == NON_EMPTY:
            out.append([])
    return [v for v in out if not (console and isinstance(v, list))]


def as_text(value: Any) -> str:
    return {True: "true", False: "false"}.get(value, str(value)) if isinstance(value, bool) else str(value)


# -- the checker's messages and conversions ----------------------------------------------------
@pytest.mark.parametrize("ann, value, message", [
    (Annotated[int, Gt(0)], 0, "x=0 must be >= 1"),  # an int > 0 reads as >= 1
    (Annotated[float, Gt(0), Le(1)], 0, "x=0 must be in (0, 1]"),
    (int | None, 1.5, "x=1.5 is not an integer or null"),
    (int, True, "x=true is not an integer"),
    (bool, 1, "x=1 is not a boolean (true or false)"),
    (Literal["gru", "lstm"], "tanh", "x='tanh' is not one of gru, lstm"),
    (list[Literal["png", "svg"]], ["gif"], "x=['gif'] holds 'gif', which is not one of png, svg"),
    (tuple[float, float], [0.9], "x=[0.9] is not a list of 2 items"),
    (float, float("nan"), "x=nan is not a finite number"),
    # typing.Union on purpose: check_value must accept the pre-3.10 spelling too
    (Union[str, Path, None], 3, "x=3 is not a string or null"),  # noqa: UP007
])
def test_wrong_values_are_named_with_what_is_expected(ann, value, message):
    with pytest.raises(ConfigError) as e:
        check_value("x", value, ann)
    assert str(e.value) == message


@pytest.mark.parametrize("ann, value", [
    (float, 3), (Path, "some/file"), (Annotated[int, Le("y")], 7),  # y unknown: no bound
    (timedelta | None, "abc"), (typing.Callable, "abc"),  # nothing to check
])
def test_values_that_fit_or_cannot_be_checked_pass(ann, value):
    check_value("x", value, ann)


@pytest.mark.parametrize("text, ann, value", [
    ("5", int | None, 5), ("null", int | None, None), ("1.5", int, "1.5"), ("2", float, 2.0),
    ("True", bool, True), ("[a.ckpt, b.ckpt]", str | list[str], ["a.ckpt", "b.ckpt"]),
    ("a.ckpt", str | list[str], "a.ckpt"),
    ("bf16", Literal[16, "bf16"], "bf16"), ("16", Literal[16, "bf16"], 16),
])
def test_command_line_text_is_converted_to_the_keys_type(text, ann, value):
    assert parse_text(text, ann) == value and type(parse_text(text, ann)) is type(value)


# -- the console commands -----------------------------------------------------------------------
CONSOLE = {
    "attnmt-translate": (translate_main, (TranslateSettings, DecodeSettings)),
    "attnmt-average": (average_main, (AverageSettings,)),
    "attnmt-export": (export_main, (ExportSettings,)),
    "attnmt-serve": (serve_main, (ServeSettings,)),
}
ACCEPTED = {
    ("attnmt-translate", "ckpt"), ("attnmt-translate", "input"),
    ("attnmt-average", "ckpt"), ("attnmt-average", "out"),
    ("attnmt-export", "ckpt"), ("attnmt-export", "out"), ("attnmt-serve", "ckpt"), ("attnmt-serve", "host"),
    ("attnmt-translate", "device"),  # any text types; decode_device names a wrong one (entry-point cases below)
    ("attnmt-serve", "device"),
    ("attnmt-serve", "api_key"),  # any text is a key
    ("attnmt-serve", "allowed_hosts"),  # text; a name that is not a host is its own error (test_serve_limits)
}


def console_table() -> tuple[list, set]:
    cases, untested = [], set()
    for command, (_, schemas) in CONSOLE.items():
        defaults = {f.name: f.default for s in schemas for f in dataclasses.fields(s)}
        for schema in schemas:
            hints = typing.get_type_hints(schema, include_extras=True)
            for f in dataclasses.fields(schema):
                values = wrong_values(hints[f.name], defaults, console=True)
                cases += [pytest.param(command, f.name, as_text(v), id=f"{command} {f.name}={v}") for v in values]
                if not values:
                    untested.add((command, f.name))
    return cases, untested


CONSOLE_CASES, CONSOLE_UNTESTED = console_table()


def one_line_error(run, capsys) -> str:
    """Run ``run()`` as an entry point does; the one line it printed on stderr."""
    with pytest.raises(SystemExit) as exited:
        run()
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("command, key, text", CONSOLE_CASES)
def test_console_command_refuses_a_wrong_value(command, key, text, capsys, monkeypatch):
    main, _ = CONSOLE[command]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a b c\n")))
    argv = ([] if key == "ckpt" else ["ckpt=/nonexistent/run"]) + [f"{key}={text}"]
    line = one_line_error(lambda: main(argv), capsys)
    assert line.startswith(f"error: {key}={text} "), line


def test_console_keys_not_tested_are_the_ones_accepted_on_purpose():
    assert CONSOLE_UNTESTED == ACCEPTED


# -- train.py and evaluate.py ---------------------------------------------------------------------
GROUP_EXTRAS = {  # what an option needs to compose into a runnable config
    "data=parallel": ["data.train_prefix=a", "data.valid_prefix=b", "data.src_lang=de", "data.tgt_lang=en"],
    "scheduler=linear": ["trainer.max_steps=100"],
}
GROUPS = ["data", "model", "task", "optimizer", "scheduler", "trainer", "callbacks", "logger"]


def options() -> list[list[str]]:
    out = [[]]
    for group in GROUPS:
        for path in sorted((CONF / group).glob("*.yaml")):
            choice = f"{group}={path.stem}"
            out.append([choice, *GROUP_EXTRAS.get(choice, [])])
    return out


def target_keys(cfg: DictConfig) -> list[tuple[str, Any, Any]]:
    """``(full key, annotation, siblings' values)`` of every configured value of every
    ``_target_`` node (nodes inside nodes are walked, not tested as values)."""
    found = []

    def walk(node: Any, key: str) -> None:
        if isinstance(node, DictConfig) and "_target_" in node:
            from hydra.utils import get_object

            params, _ = parameters(get_object(node._target_))
            siblings = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items()}
            for k in node:
                if k.startswith("_"):
                    continue
                child = None if OmegaConf.is_interpolation(node, k) else node[k]
                if isinstance(child, (DictConfig, ListConfig)) and "_target_" in str(OmegaConf.to_container(child)):
                    walk(child, f"{key}.{k}")  # a node of its own (model.attention, trainer.plugins)
                    continue
                found.append((f"{key}.{k}", params.get(k, Any), siblings))
        elif isinstance(node, DictConfig):
            for k in node:
                if not OmegaConf.is_interpolation(node, k):
                    walk(node[k], f"{key}.{k}" if key else k)
        elif isinstance(node, ListConfig):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")

    walk(cfg, "")
    return found


def hydra_table() -> tuple[list, set]:
    cases, seen, untested = [], set(), set()
    configs = [("train.py", o) for o in options()] + [("evaluate.py", ["ckpt=/nonexistent/run"])]
    for script, overrides in configs:
        cfg = compose_config(script.removesuffix(".py"), overrides, Path("/nonexistent/out"))
        keys = target_keys(cfg)
        if script == "evaluate.py":
            hints = typing.get_type_hints(EvaluateSettings, include_extras=True)
            keys += [(k, hints[k], {}) for k in hints]
        for key, ann, siblings in keys:
            node = key.rsplit(".", 1)[0] if "." in key else None
            ident = (script, node and OmegaConf.select(cfg, f"{node}._target_"), key)
            if ident in seen:
                continue
            seen.add(ident)
            values = wrong_values(ann, siblings, console=False)
            cases += [pytest.param(script, overrides, key, v, id=f"{script} {' '.join(overrides[:1])} {key}={v}")
                      for v in values]
            if not values:
                untested.add((script, key))
    return cases, untested


HYDRA_CASES, HYDRA_UNTESTED = hydra_table()
COMPOSED: dict[tuple[str, tuple[str, ...]], DictConfig] = {}


def entry_point(script: str):
    """train.py or evaluate.py, loaded as a module: its hydra.main function takes a config."""
    spec = importlib.util.spec_from_file_location(script.removesuffix(".py") + "_entry", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def entry_points():
    return {s: entry_point(s) for s in ("train.py", "evaluate.py")}


@pytest.mark.parametrize("script, overrides, key, value", HYDRA_CASES)
def test_hydra_command_refuses_a_wrong_value(script, overrides, key, value, entry_points, capsys, monkeypatch):
    name = (script, tuple(overrides))
    if name not in COMPOSED:
        COMPOSED[name] = compose_config(script.removesuffix(".py"), overrides, Path("/nonexistent/out"))
    cfg = copy.deepcopy(COMPOSED[name])
    OmegaConf.update(cfg, key, value, merge=False)
    module = entry_points[script]

    def tripwire(*_):
        raise AssertionError(f"{key}={value!r} got past the checks")

    if script == "train.py":
        monkeypatch.setattr(module, "train", tripwire)
    else:  # evaluate() checks its config first: the model must not load
        monkeypatch.setattr("attnmt.eval.evaluate.load_backend", tripwire)
    line = one_line_error(lambda: module.main(cfg), capsys)
    assert line.startswith(f"error: {key}="), line


def test_hydra_keys_not_tested_are_the_ones_accepted_on_purpose():
    # Text keys are tested with a list; what is left has no annotation that says what is wrong.
    # data.train_prefix: one path or a list of paths (text or a list of text); a prefix whose
    # files do not exist is its own one-line error when the data is checked. evaluate.py's ckpt: one
    # checkpoint or a list of them (an ensemble); a path that is not there is its own error.
    assert HYDRA_UNTESTED == {("train.py", "data.train_prefix"), ("evaluate.py", "ckpt")}, sorted(HYDRA_UNTESTED)


def test_the_table_covers_every_group_and_many_keys():
    keys = {case.values[2] for case in HYDRA_CASES}
    for expected in ("model.hidden_size", "model.d_model", "model.attention.score", "data.max_tokens",
                     "data.num_train", "data.test_set", "task.label_smoothing", "optimizer.betas",
                     "scheduler.factor", "trainer.max_steps", "trainer.precision", "trainer.enable_progress_bar",
                     "callbacks.early_stopping.patience", "logger.csv.version", "decode.n_best", "eval.formats",
                     "split", "eval.member"):
        assert expected in keys, expected


def test_evaluate_config_holds_the_settings_defaults():
    cfg = compose_config("evaluate", ["ckpt=x"])
    for node, schema in (("decode", DecodeSettings), ("eval", EvalSettings)):
        configured = {k: v for k, v in OmegaConf.to_container(cfg[node]).items() if k != "_target_"}
        assert configured == dataclasses.asdict(schema()), node


# -- the real entry points, in a subprocess --------------------------------------------------------
def command(name: str) -> list[str]:
    """The console script installed beside this Python, or its module (as the package declares it)
    run by this Python; never another installation's script found on PATH."""
    from importlib.metadata import entry_points

    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return [str(beside)]
    module = entry_points(group="console_scripts")[name].value.split(":")[0]
    return [sys.executable, "-m", module]


def run(args: list[str], cwd: Path, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, input=stdin, capture_output=True, timeout=600)


@pytest.mark.parametrize("args, expected", [
    (["train.py", "model.hidden_size=abc"], "error: model.hidden_size='abc' is not an integer"),
    # One case per entry point proves the wiring in the quick tier; the values themselves are
    # tested in this process above, so the other subprocess cases (seconds each) are slow.
    *[pytest.param(*case, marks=pytest.mark.slow) for case in [
        (["train.py", "seed=1.5"], "error: data.seed=1.5 (from ${seed}) is not an integer"),
        (["train.py", "trainer.enable_progress_bar=3"], "error: trainer.enable_progress_bar=3 is not a boolean"),
        (["train.py", "data=parallel"], "error: data.train_prefix is required"),
        (["evaluate.py", "ckpt=/nonexistent/run", "eval.formats=[png,gif]"],
         "error: eval.formats=['png', 'gif'] holds 'gif'"),
        (["evaluate.py"], "error: ckpt is required"),
        (["evaluate.py", "ckpt=/nonexistent/run", "decode.device=tpu"],
         "error: decode.device=tpu: expected auto, cpu, cuda or cuda:N"),
    ]],
    (["evaluate.py", "ckpt=/nonexistent/run", "decode.beam_size=0"], "error: decode.beam_size=0 must be >= 1"),
    pytest.param(["evaluate.py", "ckpt=/nonexistent/run", "decode.device=cuda"],
                 "error: decode.device=cuda: no CUDA device is visible here; use decode.device=cpu (or auto)",
                 marks=[pytest.mark.slow,
                        pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible here")]),
])
def test_hydra_entry_points_refuse_wrong_values(args, expected, tmp_path):
    script, *rest = args
    proc = run([sys.executable, str(ROOT / script), *rest, f"hydra.run.dir={tmp_path / 'out'}"], tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines() == [err.strip()] and err.startswith(expected), err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_decode_device_is_the_one_asked_for_where_it_exists(monkeypatch):
    from attnmt.utils.device import decode_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a machine with two GPUs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert decode_device("auto") == decode_device("cuda") == torch.device("cuda", 0)
    assert decode_device("cuda:1") == torch.device("cuda", 1) and decode_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError) as e:
        decode_device("cuda:2", "device")
    assert str(e.value) == "device=cuda:2: 2 CUDA device(s) visible here (cuda:0..cuda:1)"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert decode_device("auto") == torch.device("cpu")


def test_compute_type_auto_is_bfloat16_on_a_fast_bf16_gpu_and_float32_elsewhere(monkeypatch):
    from attnmt.utils.device import export_compute_type, torch_compute_type

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # Ampere or newer
    assert torch_compute_type("auto", cuda) == "bfloat16" and torch_compute_type("float32", cuda) == "float32"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))  # a V100
    assert torch_compute_type("auto", cuda) == "float32" and torch_compute_type("float16", cuda) == "float16"
    assert torch_compute_type("auto", cpu) == "float32" and torch_compute_type("bfloat16", cpu) == "bfloat16"
    with pytest.raises(ConfigError, match=r"^compute_type=int8_float16: attnmt's own search computes in float32, "
                                          r"bfloat16, float16; int8 types are CTranslate2's: export the model"):
        torch_compute_type("int8_float16", cuda)
    assert export_compute_type("auto", "cuda", "float32") == "float16"
    assert export_compute_type("auto", "cuda", "int8") == "int8_float16"
    assert export_compute_type("auto", "cpu", "int8") == "default"  # the export's own type
    assert export_compute_type("bfloat16", "cuda", "int8") == "bfloat16"


def test_a_checkpoint_refuses_an_int8_compute_type_before_it_loads():
    from attnmt.deploy.translate import TranslateSettings, Translator

    with pytest.raises(ConfigError, match=r"^compute_type=int8: attnmt's own search"):
        Translator(TranslateSettings(ckpt="/nonexistent/run"), DecodeSettings(device="cpu", compute_type="int8"))


@pytest.mark.parametrize("args, stdin, expected", [
    (["attnmt-translate", "ckpt=/nonexistent/run", "alpha=abc"], b"a b\n", "error: alpha=abc is not a number"),
    (["attnmt-translate", "ckpt=/nonexistent/run"], b"good line\ncaf\xe9\n",
     "error: <stdin>: line 2 is not valid UTF-8"),
    (["attnmt-translate", "ckpt=/nonexistent/run", "device=gpu"], b"a b\n",
     "error: device=gpu: expected auto, cpu, cuda or cuda:N"),
    (["attnmt-average", "ckpt=/nonexistent/run", "last=0"], b"", "error: last=0 must be >= 1"),
    (["attnmt-compare"], b"", "error: the following arguments are required: folder"),
    *[pytest.param(*case, marks=pytest.mark.slow) for case in [
        (["attnmt-serve", "ckpt=/nonexistent/run", "device=gpu"], b"",
         "error: device=gpu: expected auto, cpu, cuda or cuda:N"),
        (["attnmt-compare", ".", "--device", "tpu"], b"", "error: --device=tpu: expected auto, cpu, cuda or cuda:N"),
        (["attnmt-translate", "ckpt=/nonexistent/run", "compute_type=int8"], b"a b\n",
         "error: compute_type=int8: attnmt's own search computes in float32, bfloat16, float16; int8 types are "
         "CTranslate2's"),
    ]],
])
def test_console_entry_points_refuse_wrong_values(args, stdin, expected, tmp_path):
    proc = run([*command(args[0]), *args[1:]], tmp_path, stdin)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and not proc.stdout, (proc.stdout, err)
    assert err.strip().splitlines() == [err.strip()] and err.startswith(expected), err


# -- standard input --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """An untrained model and a small tokenizer: enough to check what becomes of each line."""
    return untrained_model(tmp_path_factory.mktemp("spm"), "rnn_bahdanau")


def translate_stdin(raw: bytes, argv: list[str], untrained, monkeypatch, capsys) -> list[str]:
    model, tokenizer = untrained
    monkeypatch.setattr("attnmt.decode.checkpoint.load_for_decoding",
                        lambda _: (model, tokenizer, {"data": {}}, Path("x")))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    translate_main(["ckpt=x", "beam_size=2", *argv])
    return capsys.readouterr().out.split("\n")[:-1]


def test_stdin_lines_keep_their_alignment(untrained, monkeypatch, capsys, tmp_path):
    from attnmt.data.io import iter_lines, iter_stdin, read_lines, read_stdin

    lines = [b"w1 x1 y1", b"w2 x2 y2\r", b"   \t", b"w3 \x00 y3", b"", b"w1 x1 y1"]
    raw = b"\n".join(lines) + b"\n"
    # attnmt's own reading, before any tokenizer (sentencepiece would drop a CR itself): the CR of a
    # CRLF line goes, every other character stays, one line per line; from stdin as from a file.
    expected = ["w1 x1 y1", "w2 x2 y2", "   \t", "w3 \x00 y3", "", "w1 x1 y1"]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    assert list(iter_stdin()) == expected
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    assert read_stdin() == expected
    (tmp_path / "input.txt").write_bytes(raw)
    assert list(iter_lines(tmp_path / "input.txt")) == expected and read_lines(tmp_path / "input.txt") == expected
    # ... and what attnmt-translate gives the tokenizer: those lines, blank ones left out.
    tokenizer, encoded = untrained[1], []
    encode = tokenizer.encode_src

    def recording(texts, *args, **keys):
        encoded.extend(texts)
        return encode(texts, *args, **keys)

    monkeypatch.setattr(tokenizer, "encode_src", recording)
    out = translate_stdin(raw, [], untrained, monkeypatch, capsys)
    assert encoded == [line for line in expected if line.strip()]
    assert len(out) == len(lines)  # one output line per input line
    assert out[2] == "" and out[4] == ""  # blank and whitespace-only lines: an empty translation
    assert out[0] == out[5]
    crlf_free = translate_stdin(b"w2 x2 y2\n", [], untrained, monkeypatch, capsys)
    assert out[1] == crlf_free[0]  # the CR of a CRLF line is dropped, as from a file

    rows = translate_stdin(b"w1 x1\n \nw2\n", ["n_best=2", "alignments=true"], untrained, monkeypatch, capsys)
    assert [r.split(" ||| ")[0] for r in rows] == ["0", "0", "1", "2", "2"]
    assert rows[2] == "1 |||  ||| 0.0000 ||| "


def test_translate_word_links_any_or_merged(untrained, monkeypatch, capsys):
    """``word_links=merged``: one link per target word; ``any`` (the default): every target word
    linked, and a word whose pieces attend to different source words gets more than one link."""
    raw = b"".join(f"w{i} x{i % 7} y{i % 13} w{i + 17}\n".encode() for i in range(300, 330))

    def links(argv):
        out = translate_stdin(raw, ["alignments=true", *argv], untrained, monkeypatch, capsys)
        rows = [r.split(" ||| ") for r in out]
        return [(len(r[1].split()), [tuple(map(int, x.split("-"))) for x in r[2].split()]) for r in rows]

    merged, default = links(["word_links=merged"]), links([])
    assert [n for n, _ in merged] == [n for n, _ in default]  # the same translations
    for n, pairs in merged:
        assert sorted(j for _, j in pairs) == list(range(n))
    for n, pairs in default:
        assert {j for _, j in pairs} == set(range(n))
    assert any(len(pairs) > n for n, pairs in default)
    with pytest.raises(SystemExit):
        translate_stdin(raw, ["alignments=true", "word_links=pieces"], untrained, monkeypatch, capsys)
    assert "word_links" in capsys.readouterr().err


def test_stdin_that_is_not_utf8_names_the_first_bad_line_and_prints_nothing(untrained, monkeypatch, capsys):
    model, tokenizer = untrained
    monkeypatch.setattr("attnmt.decode.checkpoint.load_for_decoding", lambda _: pytest.fail("the model was loaded"))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"w1 x1\nw2 x2\r\nw3 \xff\nw4 \xfe\n")))
    line = one_line_error(lambda: translate_main(["ckpt=x"]), capsys)
    assert line == "error: <stdin>: line 3 is not valid UTF-8"


# -- answering fast: nothing heavy before the arguments are checked ---------------------------------
HEAVY = ("torch", "pytorch_lightning", "lightning_fabric", "matplotlib", "sentencepiece")


def test_console_commands_answer_help_and_bad_arguments_without_heavy_imports():
    script = f"""
import io, sys
from attnmt.deploy.translate import main as translate
from attnmt.train.average import main as average
from attnmt.eval.compare import main as compare
from attnmt.deploy.export import main as export
from attnmt.deploy.serve import main as serve
sys.stdin = io.TextIOWrapper(io.BytesIO(b"a\\n"))
for main, argv in [(translate, ["--help"]), (translate, ["ckpt=x", "alpha=abc"]), (translate, ["ckpt=x", "beam=2"]),
                   (translate, ["ckpt=x", "input=/nonexistent"]),
                   (average, ["--help"]), (average, ["ckpt=x", "last=abc"]),
                   (compare, ["--help"]), (compare, []), (compare, ["a", "b"]),
                   (export, ["--help"]), (export, ["ckpt=x", "quantization=int4"]),
                   (serve, ["--help"]), (serve, ["ckpt=x", "port=0"])]:
    try:
        main(argv)
    except SystemExit:
        pass
heavy = [m for m in {HEAVY!r} if m in sys.modules]
assert not heavy, heavy
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
