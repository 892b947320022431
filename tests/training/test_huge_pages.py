"""saekit puts large CPU tensors on transparent huge pages (saekit/__init__.py): fresh [batch, d_sae]
tensors then cost a few hundred page faults instead of tens of thousands."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

FAULTS_PER_TENSOR = """
import resource
import saekit, torch
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    torch.empty(4096, 4096).fill_(1.0)  # 64 MiB, freed and allocated afresh each time
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 4)
"""


def _faults(env_value: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if env_value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = env_value
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_TENSOR], env=env, capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def test_importing_saekit_enables_huge_pages_unless_the_user_said_no():
    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not setting.exists() or "[never]" in setting.read_text():
        pytest.skip("this kernel has transparent huge pages switched off")
    default, opted_out = _faults(None), _faults("0")
    assert opted_out > 8000  # 64 MiB on 4 KiB pages: ~16k faults
    assert default < opted_out / 4
