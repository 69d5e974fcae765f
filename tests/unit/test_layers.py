"""The package's layers: every import, at the top of a module or inside a function, points to its own
layer or one below, and no two packages import each other (directly or round a loop).

    cli                                  the commands: thin wrappers over the library
    trainers, eval, export, serve,       what a command does: train, evaluate, merge, export and serve,
    tracking, sweep, studio              send figures to trackers, run sweeps of trials, the web studio
    inference                            load a run (or a base model) and answer with it
    runfolder, runlist, runcard, data,   run folders and their list, records to tokens, model loading
    models, losses, grammar, constrain,  and forward passes, loss functions, constrained decoding,
    shared_prefix                        a shared prompt prefix computed once,
    vision                               image-text records and models
    config                               the typed schema: every setting and its default
    graders                              scoring answers (pure functions of strings)
    errors, _deps, atomic, faults, failures, (package root)   what everything may use: errors, atomic
                                         writes, fault-injection points, the full-disk message
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "tunery"

LAYERS = [
    {"errors", "_deps", "atomic", "faults", "failures", "__init__"},
    {"graders"},
    {"config"},
    {"runfolder", "runlist", "runcard", "data", "models", "losses", "grammar", "constrain", "shared_prefix", "vision"},
    {"inference"},
    {"trainers", "eval", "export", "serve", "tracking", "sweep", "studio"},
    {"cli"},
]


def unit_of(module: str) -> str:
    """`tunery.trainers.loop` -> `trainers`; `tunery.runfolder` -> `runfolder`; `tunery` -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_of(unit: str) -> int:
    found = [i for i, units in enumerate(LAYERS) if unit in units]
    assert found, f"{unit} is in no layer: add it to LAYERS in {__file__}"
    return found[0]


def module_name(path: Path, src: Path = SRC) -> str:
    rel = path.relative_to(src.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, src: Path = SRC) -> list[tuple[int, str]]:
    """(line, imported tunery module) for every import in the file, nested ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path, src).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "tunery"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] == "tunery":
                if base == "tunery":  # `from tunery import x`: x is a module or a name of the root
                    found += [(node.lineno, f"tunery.{a.name}") for a in node.names]
                else:
                    found.append((node.lineno, base))
    return found


def all_edges(src: Path = SRC) -> list[tuple[str, str, str]]:
    """(importing unit, imported unit, where) for every tunery import between different units."""
    edges = []
    for path in sorted(src.rglob("*.py")):
        source = unit_of(module_name(path, src))
        for line, target_module in imports_of(path, src):
            target = unit_of(target_module)
            if target == "__version__":
                target = "__init__"
            if target != source:
                edges.append((source, target, f"{path.relative_to(src.parent)}:{line}"))
    return edges


def upward_imports(src: Path = SRC) -> list[str]:
    return [f"{where}: {a} imports {b}" for a, b, where in all_edges(src) if layer_of(b) > layer_of(a)]


def loops(src: Path = SRC) -> list[tuple[str, str]]:
    """Pairs of units that reach each other through imports."""
    graph: dict[str, set[str]] = {}
    for a, b, _ in all_edges(src):
        graph.setdefault(a, set()).add(b)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        return False

    return sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if reaches(b, a)})


def test_every_import_points_to_its_own_layer_or_below():
    assert upward_imports() == []


def test_no_two_units_import_each_other():
    assert loops() == []


def test_the_checker_finds_an_upward_import_inside_a_function_and_a_loop(tmp_path):
    src = tmp_path / "tunery"
    (src / "config").mkdir(parents=True)
    (src / "data").mkdir()
    (src / "config" / "schema.py").write_text("def f():\n    from tunery.trainers.loop import Loop\n")
    (src / "data" / "a.py").write_text("from ..models import forward\n")
    (src / "models.py").write_text("import tunery.data.a\n")
    assert upward_imports(src) == ["tunery/config/schema.py:2: config imports trainers"]
    assert loops(src) == [("data", "models")]
