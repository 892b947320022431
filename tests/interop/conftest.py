"""Shared by the interop tests: the marker, and the peer environment's python (built on first use)."""

from pathlib import Path

import pytest

from tests.side_venv import side_python

HERE = Path(__file__).resolve().parent


def pytest_configure(config):
    config.addinivalue_line("markers", "peers: compares saekit with the real SAELens, sparsify, "
                                       "dictionary_learning and circuit-tracer in their own virtual environments")


@pytest.fixture(scope="session")
def peer_python() -> Path:
    return side_python(HERE / "peer_env.sh", "SAEKIT_PEER_VENV", ".cache/peer-venv", "peer")
