"""Training logs: a JSONL file always (the record a run leaves behind), wandb and TensorBoard on request.

The optional sinks are extras (`pip install saekit[wandb]`, `saekit[tensorboard]`), imported only when
asked for, so a plain install never needs them and a missing one is a one-line error naming the extra.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Any

from saekit.errors import SaekitError

SINKS = ("wandb", "tensorboard")


def _require(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SaekitError(f"logging to {extra} needs its package: pip install 'saekit[{extra}]'") from None


class RunLog:
    """One line per dictionary per logged step, written to every sink."""

    def __init__(self, path: Path | None, sinks: list[str] | None = None, run_name: str | None = None,
                 config: dict[str, Any] | None = None, directory: Path | None = None) -> None:
        self.handle = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(path, "a")  # noqa: SIM115 (held for the run, closed by close())
        self.wandb_run = None
        self.tensorboard = None
        for sink in sinks or []:
            if sink == "wandb":
                wandb = _require("wandb", "wandb")
                self.wandb_run = wandb.init(name=run_name, config=config)
            elif sink == "tensorboard":
                writer = _require("torch.utils.tensorboard", "tensorboard").SummaryWriter
                self.tensorboard = writer(log_dir=str(directory or Path("runs") / (run_name or "saekit")))
            else:
                raise SaekitError(f"unknown logger {sink!r}: choose from {', '.join(SINKS)}")

    def write(self, step: int, tokens: int, elapsed: float, logs: list[tuple[str, dict[str, float]]]) -> None:
        if self.handle is not None:
            for name, parts in logs:
                # strict JSON: a non-finite value (which stops training anyway) is written as null
                values = {key: value if math.isfinite(value) else None for key, value in parts.items()}
                self.handle.write(json.dumps({"step": step, "tokens": tokens, "elapsed_s": round(elapsed, 3),
                                              "dictionary": name, **values}, allow_nan=False) + "\n")
            self.handle.flush()
        scalars = {f"{name}/{key}": float(value) for name, parts in logs for key, value in parts.items()}
        if self.wandb_run is not None:
            self.wandb_run.log({**scalars, "tokens": tokens}, step=step)
        if self.tensorboard is not None:
            for key, value in scalars.items():
                self.tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()
