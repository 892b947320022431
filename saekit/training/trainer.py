"""The one training loop: many dictionaries from a single stream of activations.

The stream is any iterable of float tensors `[n, d_in]` (any n; the loop re-batches to `batch_size`), or
of dicts `{hookpoint: tensor}` when dictionaries sit on several hookpoints of one model forward. Each
batch is read once and handed to every sweep member, which is why a sweep costs less than separate runs.

Exact resume: a checkpoint holds every member's state plus the step and the number of tokens consumed.
On resume the stream is advanced past those tokens: through `stream.resume_from(tokens)` when the
stream offers it (cheap seeking, e.g. a disk cache or a text stream), otherwise by reading and
discarding them, which requires a deterministic stream.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.config import DictionaryConfig, TrainConfig
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.training.checkpoint import load_latest_checkpoint, write_checkpoint
from saekit.training.member import SweepMember

logger = logging.getLogger(__name__)
SINGLE = ""  # key used when the stream yields plain tensors


def _as_dict(item: Any) -> dict[str, Tensor]:
    if isinstance(item, dict):
        return item
    if isinstance(item, Tensor):
        return {SINGLE: item}
    try:
        return {SINGLE: torch.as_tensor(item)}
    except (TypeError, ValueError, RuntimeError):
        raise SaekitError(f"the activation stream yielded a {type(item).__name__}; it must yield "
                          "float tensors [batch, d_in] or dicts of them") from None


def rebatch(stream: Iterable[Any], batch_size: int, skip_tokens: int = 0) -> Iterator[dict[str, Tensor]]:
    """Re-chunk a stream of `[n, d]` tensors (or dicts of them) into batches of exactly `batch_size`."""
    chunks: list[dict[str, Tensor]] = []
    buffered = 0
    for item in stream:
        item = _as_dict(item)
        rows = next(iter(item.values())).shape[0]
        if skip_tokens >= rows:
            skip_tokens -= rows
            continue
        if skip_tokens:
            item = {key: value[skip_tokens:] for key, value in item.items()}
            rows -= skip_tokens
            skip_tokens = 0
        chunks.append(item)
        buffered += rows
        while buffered >= batch_size:
            merged = {key: torch.cat([c[key] for c in chunks]) for key in chunks[0]}
            yield {key: value[:batch_size] for key, value in merged.items()}
            rest = {key: value[batch_size:] for key, value in merged.items()}
            buffered -= batch_size
            chunks = [rest] if buffered else []


def _unique_names(configs: Sequence[DictionaryConfig]) -> list[str]:
    names: list[str] = []
    for cfg in configs:
        base = cfg.display_name.replace("/", "_")
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def _lookup(batch: dict[str, Tensor], key: str | None, cfg: DictionaryConfig) -> Tensor:
    if key in batch:
        return batch[key]
    if key is None and len(batch) == 1:
        return next(iter(batch.values()))
    raise SaekitError(f"dictionary {cfg.display_name} needs activations of hookpoint {key!r} but the "
                      f"stream has {', '.join(sorted(batch)) or 'plain tensors'}: set each config's "
                      "hookpoint (and target_hookpoint / source_hookpoints) to names in the stream")


def member_inputs(cfg: DictionaryConfig, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
    """(input, target) of one dictionary from a batch: crosscoders concatenate their sources,
    transcoders read a separate target."""
    if SINGLE in batch and not cfg.source_hookpoints and not cfg.is_transcoder:
        x = batch[SINGLE].float()  # a plain-tensor stream feeds every dictionary, whatever its label
    elif cfg.source_hookpoints:
        x = torch.cat([_lookup(batch, key, cfg).float() for key in cfg.source_hookpoints], dim=-1)
    else:
        x = _lookup(batch, cfg.hookpoint, cfg).float()
    target = _lookup(batch, cfg.target_hookpoint, cfg).float() if cfg.is_transcoder else None
    if x.shape[-1] != cfg.d_in:
        raise SaekitError(f"activations have width {x.shape[-1]} but dictionary {cfg.display_name} "
                          f"has d_in={cfg.d_in}")
    if target is not None and target.shape[-1] != cfg.d_out:
        raise SaekitError(f"target activations have width {target.shape[-1]} but dictionary "
                          f"{cfg.display_name} has d_out={cfg.d_out}")
    return x, target


def train(stream: Iterable[Any], configs: Sequence[DictionaryConfig] | DictionaryConfig,
          total_tokens: int | None = None, batch_size: int | None = None, *,
          device: str | torch.device = "cpu", train_config: TrainConfig | None = None,
          **train_options: Any) -> list[Dictionary]:
    """Train every config in `configs` on one pass over `stream`; return the trained dictionaries.

    Keyword options are `TrainConfig` fields (checkpoint_dir, checkpoint_every, resume, log_file, ...).
    The returned dictionaries take raw activations (normalisation folded in) and are in eval mode.
    """
    if isinstance(configs, DictionaryConfig):
        configs = [configs]
    configs = list(configs)
    if not configs:
        raise SaekitError("train needs at least one DictionaryConfig")
    if train_config is None:
        options = dict(train_options)
        if total_tokens is not None:
            options["total_tokens"] = total_tokens
        if batch_size is not None:
            options["batch_size"] = batch_size
        train_config = TrainConfig(**options)
    tc = train_config
    total_steps = tc.total_steps
    names = _unique_names(configs)
    members = [SweepMember(cfg, total_steps, device) for cfg in configs]

    step, tokens_seen, resumed = 0, 0, False
    if tc.checkpoint_dir and tc.resume:
        loaded = load_latest_checkpoint(tc.checkpoint_dir)
        if loaded is not None:
            state, meta = loaded
            saved = meta.get("configs")
            if saved != [cfg.to_dict() for cfg in configs] or meta.get("batch_size") != tc.batch_size \
                    or meta.get("total_tokens") != tc.total_tokens:
                raise SaekitError(f"checkpoint in {tc.checkpoint_dir} was made with different configs "
                                  "or token budget: use a new checkpoint_dir or resume=False")
            for member, member_state in zip(members, state["members"]):
                member.load_state_dict(member_state)
            torch.set_rng_state(state["torch_rng"])
            step, tokens_seen, resumed = int(meta["step"]), int(meta["tokens_seen"]), True
            logger.info("resumed from step %d (%d tokens)", step, tokens_seen)

    if resumed and hasattr(stream, "resume_from"):
        batches = rebatch(stream.resume_from(tokens_seen), tc.batch_size)
    else:
        batches = rebatch(stream, tc.batch_size, skip_tokens=tokens_seen)

    log_path = Path(tc.log_file) if tc.log_file else (
        Path(tc.checkpoint_dir) / "log.jsonl" if tc.checkpoint_dir else None)
    log_handle = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_handle = open(log_path, "a")

    def checkpoint() -> None:
        if not tc.checkpoint_dir:
            return
        state = {"members": [m.state_dict() for m in members], "torch_rng": torch.get_rng_state()}
        meta = {"tokens_seen": tokens_seen, "total_tokens": tc.total_tokens,
                "batch_size": tc.batch_size, "names": names,
                "configs": [cfg.to_dict() for cfg in configs]}
        exports = {name: m.export(tokens_seen) for name, m in zip(names, members)}
        write_checkpoint(tc.checkpoint_dir, step, state, meta, exports, tc.keep_checkpoints)

    bar = tqdm(total=tc.total_tokens, initial=tokens_seen, unit="tok", unit_scale=True,
               disable=not tc.progress, desc="training", dynamic_ncols=True)
    started = time.perf_counter()
    try:
        while step < total_steps:
            batch = next(batches, None)
            if batch is None:
                logger.warning("the activation stream ended after %d tokens, before total_tokens=%d",
                               tokens_seen, tc.total_tokens)
                break
            logs = []
            for name, member in zip(names, members):
                x, target = member_inputs(member.cfg, batch)
                if step == 0:
                    member.start(x, target)
                logs.append((name, member.step(x, step, target)))
            step += 1
            tokens_seen += tc.batch_size
            bar.update(tc.batch_size)
            if step % tc.log_every == 0 or step == total_steps:
                elapsed = time.perf_counter() - started
                if log_handle is not None:
                    for name, parts in logs:
                        log_handle.write(json.dumps({"step": step, "tokens": tokens_seen,
                                                     "elapsed_s": round(elapsed, 3),
                                                     "dictionary": name, **parts}) + "\n")
                    log_handle.flush()
                bar.set_postfix({"loss": f"{logs[0][1]['loss']:.4g}", "l0": f"{logs[0][1]['l0']:.1f}"})
            if tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < total_steps:
                checkpoint()
        checkpoint()
    finally:
        bar.close()
        if log_handle is not None:
            log_handle.close()
    return [member.export(tokens_seen) for member in members]
