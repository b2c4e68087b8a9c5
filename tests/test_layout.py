"""The house by stage (docs/layout.md): packages on floors, each importing only its own floor and
those below, no import circles, and Lightning only where training happens. Every import counts,
function-local ones too (a circle hidden inside a function is still a circle); only imports
under ``if TYPE_CHECKING:`` (never run) are left out."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first: a module may import its own floor and those below it, never above.
FLOORS = ["utils", "ops", "models", "data", "align", "decode", "viz", "eval", "train", "deploy"]
LIGHTNING = ("pytorch_lightning", "lightning")
NO_LIGHTNING = ("utils", "ops", "models", "align", "decode", "viz", "eval")
LIGHTNING_IN_DATA = {"attnmt.data.datamodule", "attnmt.data.multi30k", "attnmt.data.parallel"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names), anywhere in it but under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = type_checking_nodes(tree)
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from attnmt import ops` imports attnmt.ops
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in SRC.joinpath("attnmt").rglob("*.py")}
    return {name: {m for m in imports(p) if m in files and m != name} for name, p in files.items()}


def floor(module: str) -> int:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in FLOORS:  # attnmt, attnmt.errors: the ground, below every floor
        return -1
    return FLOORS.index(parts[1])


def find_circle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_walker_sees_function_local_imports_and_circles():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert "attnmt.decode.checkpoint" in graph()["attnmt.deploy.export"]  # imported inside export()


def test_no_import_circles():
    circle = find_circle(graph())
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_each_package_imports_only_its_floor_and_those_below():
    upward = sorted(f"{a} ({FLOORS[floor(a)]}) imports {b} ({FLOORS[floor(b)]})"
                    for a, deps in graph().items() for b in deps if floor(b) > floor(a))
    assert not upward, "\n".join(upward)


def test_lightning_only_where_training_happens():
    files = {module_name(p): p for p in SRC.joinpath("attnmt").rglob("*.py")}
    wrong = []
    for name, path in files.items():
        uses = any(m.split(".")[0] in LIGHTNING for m in imports(path))
        package = name.split(".")[1] if name.count(".") else ""
        if uses and (package in NO_LIGHTNING or (package == "data" and name not in LIGHTNING_IN_DATA)):
            wrong.append(name)
    assert not wrong, f"these import Lightning: {wrong}"


@pytest.mark.parametrize("module", ["attnmt.decode.backends", "attnmt.deploy.translate", "attnmt.deploy.serve",
                                    "attnmt.eval.evaluate"])
def test_decoding_loads_no_training_code(module):
    """Imported for real: decoding a checkpoint (and evaluating one) pulls in neither Lightning nor
    attnmt.train."""
    code = (f"import sys, {module}; import attnmt.decode.checkpoint, attnmt.decode.search; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning') "
            "or m.startswith('attnmt.train')); print(bad[:5]); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
