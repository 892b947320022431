"""Shared by the interop tests: the marker, and the peer environment's python (built on first use)."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def pytest_configure(config):
    config.addinivalue_line("markers", "peers: compares saekit with the real SAELens, sparsify, "
                                       "dictionary_learning and circuit-tracer in their own virtual environments")


@pytest.fixture(scope="session")
def peer_python() -> Path:
    if os.environ.get("SAEKIT_PEER_TESTS", "1") == "0":
        pytest.skip("SAEKIT_PEER_TESTS=0")
    result = subprocess.run(["bash", str(HERE / "peer_env.sh")], cwd=ROOT, capture_output=True, text=True,
                            timeout=1200)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
        pytest.fail("building the peer environment failed (tests/interop/peer_env.sh):\n" + "\n".join(tail))
    venv = Path(os.environ.get("SAEKIT_PEER_VENV", ROOT / ".cache" / "peer-venv"))
    return (venv if venv.is_absolute() else ROOT / venv) / "bin" / "python"
