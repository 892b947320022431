"""The package's shape: no import cycles, no method names outside the method registry, a new method is
one class, and the linters and the type checker pass."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import saekit
from saekit.methods import Encoding, get_method, method_names, register
from saekit.methods.relu import ReLU

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "saekit"


def import_graph() -> dict[str, set[str]]:
    """Module -> the saekit modules it imports anywhere (functions included; TYPE_CHECKING excluded)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skipped = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                   for node in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
            for target in targets:
                found = resolve(target) if target.startswith("saekit") else None
                if found and found != name:
                    graph[name].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 60 and graph["saekit.training.trainer"]  # the walk found the package
    assert cycles(graph) == []
    # and the checker does find one when there is one
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


# A branch on a dictionary method: `method == "topk"`, `cfg.method in (...)`, a family tuple. (SAELens's
# architecture strings and sparsify's activation names are formats' facts, not saekit methods.)
METHOD_BRANCH = re.compile(r"\bmethod\s*(==|!=|\bin\s*[\(\[]|\bnot\s+in\s*[\(\[])|TOPK_FAMILY|"
                           r"\bmethod\.name\s*(==|!=)")


def test_no_method_name_branches_outside_the_method_registry():
    offending = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "methods":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if METHOD_BRANCH.search(line.split("#")[0]):
                offending.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offending == []
    assert METHOD_BRANCH.search('if cfg.method == "topk":') and METHOD_BRANCH.search('if method in ("a",):')


class _ScaledReLU(ReLU):
    """A made-up method, to show what adding one takes: a class (here: ReLU with a 2x sparsity term)."""

    name = "test_scaled_relu"

    def sparsity_loss(self, d, enc: Encoding) -> torch.Tensor:
        return 2.0 * super().sparsity_loss(d, enc)


def test_a_new_method_is_one_class_and_trains_saves_and_loads(tmp_path):
    from saekit.data.toy import ToyConfig, ToyData

    register(_ScaledReLU())
    try:
        assert "test_scaled_relu" in method_names() and get_method("test_scaled_relu").uses_sparsity_coefficient
        spec = saekit.DictionarySpec.from_options(method="test_scaled_relu", d_in=16, d_sae=32, lr=3e-3)
        (d,) = saekit.train(ToyData(ToyConfig(d_in=16, n_features=32)), [spec], total_tokens=4096,
                            batch_size=256, progress=False)
        assert spec.name == "test_scaled_relu-l5-32"
        saekit.save(d, tmp_path / "d")
        x = torch.randn(8, 16)
        torch.testing.assert_close(saekit.load(tmp_path / "d")(x), d(x))
    finally:
        from saekit import methods

        methods._REGISTRY.pop("test_scaled_relu", None)


@pytest.mark.parametrize("tool", ["ruff", "mypy"])
def test_linters_and_type_checker_pass(tool):
    """ruff (lint and import order) on the package, tests and benchmarks; mypy on the package
    (both configured in pyproject.toml)."""
    executable = shutil.which(tool, path=str(Path(sys.executable).parent))
    assert executable, f"{tool} is not installed: it comes with the test extra (pip install -e '.[test]')"
    command = [executable, "check", "saekit", "tests", "benchmarks"] if tool == "ruff" else [executable]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


BENCHMARKS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.name != "common.py")


def test_benchmarks_use_public_entry_points_and_share_one_helper_module():
    """No benchmark reaches into a sweep member or a private name; shared readings live in common.py."""
    for path in BENCHMARKS:
        text = path.read_text()
        assert "saekit.training.member" not in text, path.name
        assert not re.search(r"from saekit[\w.]* import [^\n]*\b_\w", text), path.name
        assert not re.search(r"^def (rss_mib|peak_rss_mib|matmul_peak|synchronize)\b", text, re.M), path.name


@pytest.mark.parametrize("script", [p.name for p in BENCHMARKS])
def test_benchmark_scripts_start(script):
    """Each script imports what it uses and parses its options (`--help`), without running."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "usage" in result.stdout, result.stderr[-2000:]
