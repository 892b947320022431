"""Each prompt's activation at its last token, read at a hookpoint of any model saekit loads.

sae-probes reads TransformerLens activations; saekit reads the same quantity through its own hooks
(`models.hooks.capture`, the forward stopped after the hookpoint): the prompt is tokenised by the model's
tokenizer, BOS is put first when the tokenizer has one and did not add it (TransformerLens prepends BOS by
default, and saekit's training windows start with it too), prompts longer than `max_length` keep BOS and
their last `max_length − 1` tokens (left truncation), batches are right-padded, and the value at the last
prompt token (tokenised length − 1, BOS included) is kept. Prompts are batched by length to waste little
on padding; results come back in the prompts' order.

Activations can be cached on disk per (model fingerprint, hookpoint, dataset, max_length), as
safetensors, so several dictionaries (and reruns) share one model pass.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from saekit.io import atomic_write_bytes
from saekit.models.hooks import capture
from saekit.models.sites import Hookpoint


def tokenise_prompts(tokenizer: Any, prompts: list[str], max_length: int = 1024) -> list[list[int]]:
    bos = tokenizer.bos_token_id
    out = []
    for prompt in prompts:
        ids = list(tokenizer(prompt)["input_ids"])
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        if len(ids) > max_length:
            ids = ([bos] if bos is not None else []) + ids[len(ids) - max_length + (bos is not None):]
        if not ids:
            ids = [tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0]
        out.append(ids)
    return out


@torch.no_grad()
def last_token_activations(model: nn.Module, tokenizer: Any, prompts: list[str], point: Hookpoint,
                           batch_size: int = 16, max_length: int = 1024, progress: bool = False,
                           description: str = "prompts") -> np.ndarray:
    """[len(prompts), d] float32: the hookpoint's value at each prompt's last token."""
    from tqdm.auto import tqdm

    token_lists = tokenise_prompts(tokenizer, prompts, max_length)
    order = np.argsort([len(ids) for ids in token_lists], kind="stable")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows: list[np.ndarray | None] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc=description, unit="prompt", disable=not progress)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        lengths = [len(token_lists[i]) for i in chunk]
        width = max(lengths)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, :lengths[row]] = torch.tensor(token_lists[i])
            mask[row, :lengths[row]] = 1
        acts = capture(model, ids, [point], attention_mask=mask)[point.name]
        last = acts[torch.arange(len(chunk)), torch.tensor(lengths) - 1].float().cpu().numpy()
        for row, i in enumerate(chunk):
            rows[i] = last[row]
        bar.update(len(chunk))
    bar.close()
    return np.stack(rows).astype(np.float32)  # type: ignore[arg-type]


def model_fingerprint(model: nn.Module) -> str:
    """A short id of a model's weights: the cache key of its activations. Hashes the class, every
    parameter's name and shape and the exact bytes of up to 4,096 evenly spaced values of it (no float
    arithmetic, so the id does not change with the thread count; not the config, which transformers
    edits on save), enough to tell two checkpoints apart, cheaply."""
    digest = hashlib.sha256(type(model).__name__.encode())
    with torch.no_grad():
        for name, param in model.named_parameters():
            flat = param.detach().reshape(-1)
            sample = flat[::max(1, flat.numel() // 4096)].cpu().contiguous()
            digest.update(name.encode())
            digest.update(str(tuple(param.shape)).encode())
            digest.update(sample.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class ActivationCache:
    """Last-token activations on disk: `{folder}/{fingerprint}/{dataset}.{hookpoint}.{max_length}.safetensors`."""

    def __init__(self, folder: str | Path, fingerprint: str) -> None:
        self.folder = Path(folder) / fingerprint

    def path(self, dataset: str, hookpoint: str, max_length: int) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{dataset}.{hookpoint}.{max_length}")
        return self.folder / f"{safe}.safetensors"

    def load(self, dataset: str, hookpoint: str, max_length: int, rows: int) -> np.ndarray | None:
        from safetensors.numpy import load_file

        path = self.path(dataset, hookpoint, max_length)
        if not path.is_file():
            return None
        try:
            x = load_file(str(path))["activations"]
        except Exception:  # a damaged cache file is recomputed, never trusted
            return None
        return x if x.shape[0] == rows else None

    def save(self, dataset: str, hookpoint: str, max_length: int, x: np.ndarray) -> None:
        from safetensors.numpy import save

        data = save({"activations": np.ascontiguousarray(x)},
                    metadata={"dataset": dataset, "hookpoint": hookpoint, "max_length": json.dumps(max_length)})
        atomic_write_bytes(self.path(dataset, hookpoint, max_length), data)
