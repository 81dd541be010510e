"""The package's shape: dependencies point one way, and no module imports itself back.

Layers, bottom to top: pyramid (and the FLOP counter) -> models -> pipelines -> training -> demo ->
commands and the app -> cli. Beside them, importing none of the layers: data, io, eval. ``config``
and ``errors`` are leaves every module may use.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "pyramidflow"
LAYERS = {"pyramid": 0, "flops": 0.5, "models": 1, "pipelines": 2, "training": 3, "demo": 4, "commands": 5,
          "app": 5, "cli": 6, "__main__": 7}
BESIDE = {"data", "io", "eval"}
LEAVES = {"config", "errors", "__init__"}


def _top(module: str) -> str:
    """pyramidflow.models.vae.wan -> models."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _allowed(importer: str, imported: str) -> bool:
    a, b = _top(importer), _top(imported)
    if a == b or b in LEAVES:
        return True
    if a in BESIDE:
        return b in BESIDE
    if b in BESIDE:
        return True
    if a in LEAVES:
        return False
    return LAYERS[b] < LAYERS[a]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every pyramidflow module ``path`` imports, at the top or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("pyramidflow")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pyramidflow"):
            for alias in node.names:  # `from pyramidflow.io import checkpoint` names a module
                sub = f"{node.module}.{alias.name}"
                is_module = (ROOT.parent / (sub.replace(".", "/") + ".py")).is_file()
                out.add(sub if is_module else node.module)
    return out


GRAPH = {_module_name(p): _imports(p) for p in ROOT.rglob("*.py")}


def test_every_import_points_down_or_sideways():
    bad = sorted(f"{a} imports {b}" for a, deps in GRAPH.items() for b in deps if not _allowed(a, b))
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    """Module-level cycles, counting imports inside functions too (they only hide a cycle)."""
    edges = {a: {b for b in deps if b in GRAPH and b != a} for a, deps in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


@pytest.mark.parametrize("package", ["pyramid", "models", "pipelines", "training", "data", "io", "eval"])
def test_importing_a_package_loads_nothing_above_it(package):
    """In a fresh interpreter: ``import pyramidflow.PACKAGE`` loads only modules it may depend on."""
    code = (f"import json, sys; import pyramidflow.{package}; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('pyramidflow'))))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    bad = [m for m in loaded if not _allowed(f"pyramidflow.{package}.x", m)]
    assert not bad, f"import pyramidflow.{package} loaded {bad}"


def test_every_maths_citation_resolves():
    """``docs/maths.md section N`` (or ``sections 3-4``, ``6, 7 and 12``) names a section of the page."""
    import re

    page = (ROOT.parent / "docs" / "maths.md").read_text()
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", page, re.M)}
    cited: dict[int, list[str]] = {}
    for path in ROOT.rglob("*.py"):
        for match in re.finditer(r"docs/maths\.md sections? ([0-9][0-9 ,\-]*(?:and \d+)?)", path.read_text()):
            for part in re.split(r",|and", match.group(1)):
                bounds = [int(b) for b in part.strip().split("-") if b.strip()]
                for n in range(bounds[0], bounds[-1] + 1) if bounds else ():
                    cited.setdefault(n, []).append(path.name)
    assert len(cited) >= 15, sorted(cited)
    missing = {n: files for n, files in cited.items() if n not in sections}
    assert not missing, f"citations of sections the page does not have: {missing}"
