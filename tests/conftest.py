import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
