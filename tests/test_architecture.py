"""The layers written down in pyproject.toml hold, a wrong-way import breaks them, and no package cycle exists."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def _copy_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "simulator", tree / "simulator", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_contracts_hold_on_the_tree(tmp_path: Path) -> None:
    done = _lint_imports(_copy_tree(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    # an upward import: a codec reaching for the CLI
    ("wire/errors.py", "import simulator.cli\n", "simulator layers import only downward"),
    # the outcome vocabulary reaching for the lab
    ("outcome.py", "import simulator.lab.topology\n", "simulator layers import only downward"),
    # an Edge role importing the peer that talks to it
    ("net/edge/av_edge.py", "import simulator.net.peers.media_peer\n", "net/: edge and peers"),
    # a sans-I/O core reading the clock
    ("core/ports.py", "import time\n", "wire, core and spec are sans-I/O"),
])
def test_a_wrong_way_import_breaks_a_contract(tmp_path: Path, module: str, line: str, contract: str) -> None:
    tree = _copy_tree(tmp_path)
    target = tree / "simulator" / module
    source = target.read_text()
    # after the module docstring and the __future__ import, so the file stays valid Python
    anchor = "from __future__ import annotations\n"
    assert anchor in source
    target.write_text(source.replace(anchor, anchor + line, 1))
    done = _lint_imports(tree)
    assert done.returncode != 0, done.stdout
    assert f"{contract}" in done.stdout and "BROKEN" in done.stdout, done.stdout


def _package_of(module: str, packages: set[str]) -> str:
    return module if module in packages else module.rpartition(".")[0]


def test_no_package_level_import_cycle() -> None:
    graph = grimp.build_graph("simulator", cache_dir=None)
    packages = {m for m in graph.modules if (ROOT / m.replace(".", "/") / "__init__.py").exists()}
    edges: dict[str, set[str]] = {}
    for importer in graph.modules:
        source = _package_of(importer, packages)
        if source == "simulator":
            source = importer  # top-level modules (outcome) stand for themselves
        for imported in graph.find_modules_directly_imported_by(importer):
            target = _package_of(imported, packages)
            if target == "simulator":
                target = imported
            # a package importing its own subpackage (cli → cli.serve) is containment, not a cycle
            if source != target and not target.startswith(source + ".") and not source.startswith(target + "."):
                edges.setdefault(source, set()).add(target)

    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == [], "package import cycles: " + "; ".join(" → ".join(c) for c in cycles)
    assert len(edges) > 10  # the graph was really built
