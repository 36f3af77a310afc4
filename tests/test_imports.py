"""The package's import graph: no cycles, and the light modules stay light.

The graph is read statically with ``ast`` from every ``dmf_ray/**/*.py``: every absolute
``import dmf_ray...`` / ``from dmf_ray... import ...`` counts, including imports inside functions
and under ``if TYPE_CHECKING:``, because a lazy import only hides a cycle, it does not remove it.
The "does not import" checks run in a fresh interpreter and look at ``sys.modules``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dmf_ray"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the dmf_ray modules it imports (``from a import b`` counts ``a.b`` when that is a module)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            else:
                continue
            for target in targets:
                # The longest prefix that is a module of ours: `dmf_ray.core.drift.drift_field` -> core.drift.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    imported.add(target)
        graph[name] = imported
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, white/grey/black)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_sees_imports_inside_functions_and_type_checking() -> None:
    graph = import_graph()
    assert "dmf_ray.trainer.engine" in graph["dmf_ray.trainer.checkpoint"]
    assert "dmf_ray.core.models" in graph["dmf_ray.serving.pyfunc_model"]  # imported inside load_context
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _imported_by(module: str) -> set[str]:
    """Top-level packages in ``sys.modules`` after importing ``module`` in a fresh interpreter."""
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return {name.partition(".")[0] for name in json.loads(out)}


@pytest.mark.parametrize(
    ("module", "heavy"),
    [
        # The training loop gets its image scorer and progress reporter injected (trainer/run.py).
        ("dmf_ray.trainer.engine", {"open_clip", "cleanfid", "tqdm"}),
        # Friction schedules are numbers; their figures are drawn in trainer/plots.py.
        ("dmf_ray.core.friction", {"matplotlib"}),
        # Every Tune trial's process imports these (the trainable and the pickled plan): the
        # driver's MLflow, Optuna and plots would add ~1 s to each trial's start.
        ("dmf_ray.platform.trial", {"mlflow", "optuna", "matplotlib"}),
        ("dmf_ray.platform.plan", {"mlflow", "optuna", "matplotlib"}),
    ],
)
def test_light_modules_do_not_import_heavy_libraries(module: str, heavy: set[str]) -> None:
    # torch itself imports tqdm (torch.hub), so only what the module adds to torch counts.
    added = heavy & (_imported_by(module) - _imported_by("torch"))
    assert not added, f"{module} imports {sorted(added)}"
