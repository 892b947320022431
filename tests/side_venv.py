"""The python of a side virtual environment (a peer package saekit is compared with), built on first use
by its script (tests/side_venv.sh does the build); the fixtures of the peer tests call `side_python`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def side_python(script: Path, venv_variable: str, default_venv: str, what: str) -> Path:
    """Build (or find built) the environment of `script` and return its python; the venv is
    $`venv_variable`, else `default_venv` (relative to the repository). SAEKIT_PEER_TESTS=0 skips."""
    if os.environ.get("SAEKIT_PEER_TESTS", "1") == "0":
        pytest.skip("SAEKIT_PEER_TESTS=0")
    result = subprocess.run(["bash", str(script)], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
        pytest.fail(f"building the {what} environment failed ({script.relative_to(ROOT)}):\n" + "\n".join(tail))
    venv = Path(os.environ.get(venv_variable, ROOT / default_venv))
    return (venv if venv.is_absolute() else ROOT / venv) / "bin" / "python"
