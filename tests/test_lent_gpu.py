"""benchmarks/lent_gpu.sh, the one command a lent GPU runs, works before a GPU is lent: its imports resolve and
its parts run end to end on the CPU at smoke sizes (a lent machine's minutes are too few to find a broken
script there; the offline text's module once moved and `prepare` failed)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "lent_gpu.sh"


def test_the_saekit_imports_of_the_script_resolve():
    imports = re.findall(r"^from saekit[\w.]* import .+$", SCRIPT.read_text(), flags=re.MULTILINE)
    assert imports
    for line in imports:
        exec(line, {})


def test_its_parts_run_on_the_cpu_at_smoke_sizes(tmp_path):
    env = dict(os.environ, DEVICE="cpu", SMOKE="1", PY=sys.executable, OUT=str(tmp_path / "out"),
               PARTS="parity lr_probe", LRS="1e-3", WORK=str(tmp_path))
    done = subprocess.run(["bash", str(SCRIPT), "all"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "out"
    parts = [line.split()[1] for line in (out / "times.txt").read_text().splitlines()]
    assert parts == ["setup_there", "parity", "lr_probe", "done"]
    rows = [json.loads(line) for line in (out / "parity.txt").read_text().splitlines() if line.startswith("{")]
    assert [r["variant"] for r in rows] == ["default", "cpu here", "fp32", "no prefetch", "dense path", "no AuxK",
                                             "unfused Adam", "deterministic", "rows from host", "all off"]
    assert all(0 < r["fvu"] < 1 for r in rows)  # each variant trained and was evaluated
    probe = [json.loads(line) for line in (out / "lr-probe.txt").read_text().splitlines()]
    # 4 steps at smoke size: a figure, not yet a fit
    assert len(probe) == 1 and probe[0]["library"] == "saekit" and math.isfinite(probe[0]["fvu"])
