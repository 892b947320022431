"""Child process for the kill-and-resume test: trains a small sweep with frequent checkpoints.

Usage: python tests/training/resume_child.py <checkpoint_dir> <seconds_to_sleep_per_batch>
"""

import sys
import time

import torch

torch.set_num_threads(1)

import saekit  # noqa: E402
from saekit.data.toy import ToyConfig, ToyData  # noqa: E402

TOY = ToyConfig(d_in=16, n_features=32, mean_active=3, seed=5)
TOTAL_TOKENS = 40 * 128
NORMALIZATION_TOKENS = 4 * 128  # estimated on the first four batches


def configs() -> list[saekit.DictionarySpec]:
    return [
        saekit.DictionarySpec.from_options(method="batchtopk", d_in=16, d_sae=48, k=3, lr=3e-3, dead_tokens=256,
                                seed=1),
        saekit.DictionarySpec.from_options(method="relu", d_in=16, d_sae=48, sparsity_coefficient=2.0, lr=3e-3,
                                resample_every=10, seed=2, target_l0=4.0),  # λ steering resumes too
        saekit.DictionarySpec.from_options(method="jumprelu", d_in=16, d_sae=48, sparsity_coefficient=1e-3,
                                lr=3e-3, ghost_grads=True, dead_tokens=256, seed=3),
    ]


class SlowStream:
    def __init__(self, delay: float) -> None:
        self.data = ToyData(TOY, chunk_size=100)
        self.delay = delay

    def __iter__(self):
        for x in self.data:
            time.sleep(self.delay)
            yield x


def run(checkpoint_dir: str | None, delay: float = 0.0) -> list[saekit.Dictionary]:
    return saekit.train(SlowStream(delay), configs(), total_tokens=TOTAL_TOKENS, batch_size=128,
                        checkpoint_dir=checkpoint_dir, checkpoint_every=5, progress=False,
                        normalization_tokens=NORMALIZATION_TOKENS)


if __name__ == "__main__":
    run(sys.argv[1], float(sys.argv[2]))
    print("finished", flush=True)
