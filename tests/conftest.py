import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes `device` runs on the CPU and, where torch sees one, on the GPU too: CUDA
    paths are tested wherever a GPU exists, and nothing is skipped where none does."""
    if "device" in metafunc.fixturenames:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        metafunc.parametrize("device", devices)
