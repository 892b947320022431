"""One rank of a distributed training run (launched by tests/training/test_distributed.py, or by torchrun).

Usage: python tests/training/dist_child.py <mode> <out_dir> [delay_per_batch] [own-group]
Every rank builds the same global toy stream and keeps its own slice of each global batch. With
`own-group` the rank makes the process group itself before training (as a caller of saekit.train may).
Each rank writes `group_open_<rank>`: whether a process group is still open after training (or after
`saekit.train` failed).
"""

import os
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

import saekit  # noqa: E402
from saekit.data.toy import ToyConfig, ToyData  # noqa: E402

TOY = ToyConfig(d_in=16, n_features=32, mean_active=3, seed=9)
BATCH = 128
STEPS = 30


def configs() -> list[saekit.DictionarySpec]:
    return [
        saekit.DictionarySpec.from_options(method="topk", d_in=16, d_sae=48, k=3, lr=3e-3, dead_tokens=512, seed=1),
        saekit.DictionarySpec.from_options(method="relu", d_in=16, d_sae=48, sparsity_coefficient=1.0, lr=3e-3,
                                seed=2),
        saekit.DictionarySpec.from_options(method="jumprelu", d_in=16, d_sae=48, lr=3e-3, seed=3),
        saekit.DictionarySpec.from_options(method="batchtopk", d_in=16, d_sae=48, k=3, lr=3e-3, seed=4),
    ]


def global_batches():
    data = ToyData(TOY, chunk_size=BATCH)
    for index in range(STEPS + 5):
        yield data.chunk(index)[0]


def rank_stream(rank: int, world: int, delay: float = 0.0):
    share = BATCH // world
    for batch in global_batches():
        time.sleep(delay)
        yield batch[rank * share:(rank + 1) * share]


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    own_group = len(sys.argv) > 4 and sys.argv[4] == "own-group"
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if own_group:
        torch.distributed.init_process_group("gloo")
    (out / f"pid_{rank}").write_text(str(os.getpid()))
    try:
        dicts = saekit.train(rank_stream(rank, world, delay), configs(), total_tokens=STEPS * BATCH,
                             batch_size=BATCH, parallel=mode, progress=False, collective_timeout_s=30,
                             checkpoint_dir=str(out / "ckpt"), checkpoint_every=5)
    except saekit.SaekitError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        (out / f"group_open_{rank}").write_text(str(torch.distributed.is_initialized()))
        sys.exit(2)
    (out / f"group_open_{rank}").write_text(str(torch.distributed.is_initialized()))
    if rank == 0:
        for i, d in enumerate(dicts):
            saekit.save(d, out / f"dict_{i}")
    if own_group:  # the caller's group is the caller's to end
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
