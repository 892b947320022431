"""The one training loop: many dictionaries from a single stream of activations.

The stream is any iterable of float tensors `[n, d_in]` (any n; the loop re-batches to `batch_size`), or
of dicts `{hookpoint: tensor}` when dictionaries sit on several hookpoints of one model forward. Each
batch is read once and handed to every sweep member, which is why a sweep costs less than separate runs.
A stream of sequences yields dicts of `[n_sequences, T, d]` tensors plus a `mask` [n_sequences, T] of the
tokens that count (`ActivationStream(..., sequences=True)`): members whose objective reads sequences (an
attention replacement) get them whole, local dictionaries get the counted rows, and `batch_size` and
`total_tokens` then count sequences.

Exact resume: a checkpoint holds every member's state plus the step and the number of tokens consumed.
On resume the stream is advanced past those tokens: through `stream.resume_from(tokens)` when the
stream offers it (cheap seeking, e.g. a disk cache or a text stream), otherwise by reading and
discarding them, which requires a deterministic stream.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.config import DictionaryConfig
from saekit.data.batching import SINGLE, rebatch
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.spec import DictionarySpec
from saekit.training.checkpoint import load_latest_checkpoint, write_checkpoint
from saekit.training.config import RunConfig
from saekit.training.distributed import Distributed, local_device
from saekit.training.guard import FiniteGuard, check_finite_weights
from saekit.training.host_memory import keep_freed_blocks
from saekit.training.logs import RunLog
from saekit.training.member import MASK, SweepMember, member_inputs  # noqa: F401 (member_inputs: public here)
from saekit.training.prefetch import batches_on_device

logger = logging.getLogger(__name__)


def rank_stream(stream: Any, dist: Distributed, local_batch: int) -> Any:
    """This rank's part of `stream` under torchrun. saekit's streams know how to split themselves
    (`for_rank`): row streams (an activations file, a cache) give each rank its slice of every global
    batch, so N processes train on exactly the global batches one process would; a live model's stream
    gives each rank its own token windows, so each rank runs the model on 1/N of the text. Any other
    iterable is taken to be this rank's shard already (the caller split it)."""
    split = getattr(stream, "for_rank", None)
    return split(dist.rank, dist.world, local_batch) if callable(split) else stream


def check_world_size(stream: Any, meta: dict[str, Any], dist: Distributed | None) -> None:
    """A stream split by token windows cannot resume exactly on another number of processes (which
    windows a rank has read depends on the count); one split by rows of the global batch can."""
    recorded = int(meta.get("world_size", 1))
    world = 1 if dist is None else dist.world
    if recorded != world and getattr(stream, "rank_split", "rows") == "windows":
        raise SaekitError(f"this checkpoint was written by {recorded} process(es) reading a model live; it "
                          f"resumes exactly only on {recorded} (this run has {world}): relaunch with "
                          f"--nproc-per-node {recorded}, or train from a cache, which resumes on any number")


def unique_names(specs: Sequence[DictionarySpec]) -> list[str]:
    names: list[str] = []
    for spec in specs:
        base = spec.name.replace("/", "_")
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def batch_rows(batch: dict[str, Tensor]) -> int:
    """Tokens in a batch: its rows, or the counted tokens of a batch of sequences."""
    return int(batch[MASK].sum()) if MASK in batch else next(iter(batch.values())).shape[0]


def reads_rows(member: SweepMember) -> bool:
    """Whether a member learns from rows of activations (the local objective) rather than from the
    stream's batches as they come (sequences, token ids)."""
    return bool(getattr(member.objective, "reads_rows", True))


def _is_spec(spec: Any) -> bool:
    """A DictionarySpec, or a spec of another module kind that names the member class training it
    (`member_class`, e.g. `saekit.circuits.CLTSpec`)."""
    return isinstance(spec, DictionarySpec) or hasattr(spec, "member_class")


def as_specs(specs: Any) -> list[Any]:
    """A list of specs from one or several specs or DictionaryConfigs (method defaults)."""
    if isinstance(specs, DictionaryConfig) or _is_spec(specs):
        specs = [specs]
    out = []
    for spec in specs:
        if isinstance(spec, DictionaryConfig):
            spec = DictionarySpec(spec)
        if not _is_spec(spec):
            raise SaekitError(f"train takes DictionarySpec or DictionaryConfig objects, got "
                              f"{type(spec).__name__}")
        out.append(spec)
    if not out:
        raise SaekitError("train needs at least one dictionary")
    return out


def train(stream: Iterable[Any], specs: Sequence[DictionarySpec | DictionaryConfig] | DictionarySpec
          | DictionaryConfig, total_tokens: int | None = None, batch_size: int | None = None, *,
          run: RunConfig | None = None, objective: Any = None, **run_options: Any) -> list[Dictionary]:
    """Train every dictionary in `specs` on one pass over `stream`; return the trained dictionaries.

    Give the run either as `run=RunConfig(...)` or as keyword options (`RunConfig` fields: total_tokens,
    batch_size, device, checkpoint_dir, checkpoint_every, resume, log_file, ...), not both. The returned
    dictionaries take raw activations (normalisation folded in) and are in eval mode. Under torchrun,
    `stream` yields this rank's shard: batch_size / world tokens per global batch. `objective` replaces
    the local reconstruction loss for every member (e.g. `saekit.training.e2e.E2EObjective`, whose
    stream yields sequences: batch_size and total_tokens then count sequences), or a list with one
    objective per spec (None: the local one), so dictionaries that read rows and modules that read
    sequences (attention replacements) train together from one stream of sequences.
    """
    specs = as_specs(specs)
    if run is None:
        options = dict(run_options)
        if total_tokens is not None:
            options["total_tokens"] = total_tokens
        if batch_size is not None:
            options["batch_size"] = batch_size
        try:
            run = RunConfig(**options)
        except TypeError as error:
            raise SaekitError(f"bad run options: {error}") from None
    elif total_tokens is not None or batch_size is not None or run_options:
        given = [n for n, v in (("total_tokens", total_tokens), ("batch_size", batch_size)) if v is not None]
        raise SaekitError(f"train got run={type(run).__name__}(...) and also {', '.join(given + list(run_options))}: "
                          "put every run option in the RunConfig")
    tc = run
    device = local_device(tc.device)
    if torch.device(device).type == "cpu":
        keep_freed_blocks()  # each step's large temporaries reuse pages (host_memory.py)
    dist = Distributed.from_environment(tc.parallel, tc.collective_timeout_s, device)
    try:
        return _train_members(stream, specs, tc, device, dist, objective)
    finally:
        if dist is not None:
            dist.close()  # whatever ended the run, start-up failures included: no group left to exit time


def _train_members(stream: Iterable[Any], specs: list[DictionarySpec], tc: RunConfig, device: torch.device,
                   dist: Distributed | None, objective: Any) -> list[Dictionary]:
    """`train` once its process group (if any) exists; the caller ends the group."""
    is_main = dist is None or dist.rank == 0
    local_batch = tc.batch_size if dist is None else dist.local_batch_size(tc.batch_size)
    total_steps = tc.total_steps
    names = unique_names(specs)
    if isinstance(objective, (list, tuple)):
        if len(objective) != len(specs):
            raise SaekitError(f"train got {len(objective)} objectives for {len(specs)} dictionaries: give one "
                              "per spec (None for the local objective) or a single one for all")
        objectives = list(objective)
    else:
        objectives = [objective] * len(specs)
    members = {i: getattr(spec, "member_class", SweepMember)(spec, total_steps, device, dist, tc.autocast,
                                                              objectives[i])
               for i, spec in enumerate(specs) if dist is None or dist.owns(i)}

    step, tokens_seen, resumed = 0, 0, False
    # What identifies the data, when the stream can say (a cache, a file, a model and its text), so a
    # checkpoint refuses to resume on other data.
    describe_data = getattr(stream, "fingerprint", None)
    fingerprint = describe_data() if callable(describe_data) else None
    if dist is not None:
        stream = rank_stream(stream, dist, local_batch)
    if tc.checkpoint_dir and tc.resume:
        loaded = load_latest_checkpoint(tc.checkpoint_dir)
        if loaded is not None:
            state, meta = loaded
            check_world_size(stream, meta, dist)
            recorded = meta.get("data_fingerprint")
            if recorded is not None and fingerprint is not None and recorded != fingerprint:
                raise SaekitError(f"the checkpoint in {tc.checkpoint_dir} was trained on other data ({recorded}); "
                                  f"this stream is {fingerprint}: resume on the same data, or use a new "
                                  "checkpoint_dir")
            saved = meta.get("configs")
            if saved != [spec.to_dict() for spec in specs] or meta.get("batch_size") != tc.batch_size \
                    or meta.get("total_tokens") != tc.total_tokens:
                raise SaekitError(f"checkpoint in {tc.checkpoint_dir} was made with different configs "
                                  "or token budget: use a new checkpoint_dir or resume=False")
            for i, member in members.items():
                member.load_state_dict(state["members"][i])
            torch.set_rng_state(state["torch_rng"])
            step, tokens_seen, resumed = int(meta["step"]), int(meta["tokens_seen"]), True
            logger.info("resumed from step %d (%d tokens)", step, tokens_seen)

    local_seen = tokens_seen if dist is None else tokens_seen // dist.world
    if resumed and hasattr(stream, "resume_from"):
        rows = rebatch(stream.resume_from(local_seen), local_batch)
    else:
        rows = rebatch(stream, local_batch, skip_tokens=local_seen)
    log_path = Path(tc.log_file) if tc.log_file else (
        Path(tc.checkpoint_dir) / "log.jsonl" if tc.checkpoint_dir else None)
    run_log = None
    if is_main:
        run_log = RunLog(log_path, tc.loggers, tc.run_name, {"run": dataclasses.asdict(tc), "dictionaries":
                         [spec.to_dict() for spec in specs]}, log_path.parent if log_path else None)

    def all_member_objects(local: dict[int, Any]) -> list[Any]:
        """Every member's object (state or export), in config order, on every rank."""
        if dist is not None and dist.mode == "shard":
            merged: dict[int, Any] = {}
            for part in dist.gather_objects(local):
                merged.update(part)
            local = merged
        return [local[i] for i in range(len(specs))]

    guard = FiniteGuard(deferred=torch.device(device).type == "cuda")

    def checkpoint() -> None:
        guard.flush()
        if not tc.checkpoint_dir:
            return
        states = all_member_objects({i: m.state_dict() for i, m in members.items()})
        exports = all_member_objects({i: m.export(tokens_seen) for i, m in members.items()})
        for name, export in zip(names, exports):
            check_finite_weights(export.weights(), f"dictionary {name} at step {step}")
        if is_main:
            state = {"members": states, "torch_rng": torch.get_rng_state()}
            meta = {"tokens_seen": tokens_seen, "total_tokens": tc.total_tokens, "data_fingerprint": fingerprint,
                    "world_size": 1 if dist is None else dist.world,
                    "batch_size": tc.batch_size, "names": names,
                    "configs": [spec.to_dict() for spec in specs]}
            write_checkpoint(tc.checkpoint_dir, step, state, meta, dict(zip(names, exports)),
                             tc.keep_checkpoints)
        if dist is not None:
            dist.barrier()  # nobody runs ahead of (or resumes from) a half-written checkpoint

    def start_members(first: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        """Initialise every member from the first batches of the stream: the activation scale (and b_dec)
        is estimated on `normalization_tokens` of them. Returns the batches read ahead beyond the first,
        which are then trained on in order, as if never read ahead."""
        ahead: list[dict[str, Tensor]] = []
        world = dist.world if dist is not None and dist.mode == "data" else 1

        def tokens_in(b: dict[str, Tensor]) -> int:  # global tokens: a batch of rows, or of sequences
            return batch_rows(b) * world if MASK in b else tc.batch_size

        if any(reads_rows(m) for m in members.values()):  # other objectives start from their first batch
            tokens = tokens_in(first)
            while tokens < tc.normalization_tokens and 1 + len(ahead) < total_steps:
                more = next(batches, None)
                if more is None:
                    break
                check_batch(more, step + 1 + len(ahead), tokens_seen + tc.batch_size * (1 + len(ahead)))
                ahead.append(more)
                tokens += tokens_in(more)
        read = [first] + ahead
        if dist is not None and dist.mode == "shard":
            read = [first] + [{key: dist.gather_rows(value) for key, value in b.items()} for b in ahead]
        for member in members.values():
            if not reads_rows(member):
                member.objective.start(member, first, None)
                continue
            pairs = [member.inputs(b) for b in read]
            x = torch.cat([p[0] for p in pairs])
            target = None if pairs[0][1] is None else torch.cat([p[1] for p in pairs])  # type: ignore[misc]
            if dist is not None and dist.mode == "data":  # initialise from the global batches
                x = dist.gather_rows(x)
                target = None if target is None else dist.gather_rows(target)
            member.objective.start(member, x, target)
        return ahead

    def check_batch(batch: dict[str, Tensor], at_step: int, at_token: int) -> str:
        """Check a batch (before any member uses it); return how errors name it."""
        span = f"the batch at step {at_step} (tokens {at_token}-{at_token + tc.batch_size})"
        for key, value in batch.items():
            if value.is_floating_point():
                source = "the activation stream" if key == SINGLE else f"hookpoint {key!r} of the activation stream"
                guard.check(value, f"{span} of {source}")
            elif value.is_complex():
                raise SaekitError(f"{span} is complex ({value.dtype}): activations must be real numbers")
        return span

    bar = tqdm(total=tc.total_tokens, initial=tokens_seen, unit="tok", unit_scale=True,
               disable=not (tc.progress and is_main), desc="training", dynamic_ncols=True)
    started = time.perf_counter()
    ahead: list[dict[str, Tensor]] = []
    # exactly the batches training will use: a thread reading ahead must not run the model past the end.
    # Made just before `try`, so that whatever fails from here on closes the thread (finally below).
    batches = batches_on_device(itertools.islice(rows, total_steps - step), device,
                                tc.prefetch_depth(torch.device(device).type))
    try:
        while step < total_steps:
            next_batch = ahead.pop(0) if ahead else next(batches, None)
            exhausted = next_batch is None if dist is None else dist.any(next_batch is None)
            if exhausted or next_batch is None:
                if step == 0:
                    raise SaekitError(f"the activation stream ended before one batch of {tc.batch_size} tokens: "
                                      "there is nothing to train on (an empty or too short file or cache, or "
                                      "text that tokenises to nothing); give more data or a smaller batch_size")
                logger.warning("the activation stream ended after %d tokens, before total_tokens=%d",
                               tokens_seen, tc.total_tokens)
                break
            batch = next_batch
            if dist is not None and dist.mode == "shard":
                batch = {key: dist.gather_rows(value) for key, value in batch.items()}
            span = check_batch(batch, step, tokens_seen)
            if step == 0:
                ahead = start_members(batch)
            logs = []
            for i, member in members.items():
                x: Any
                target: Tensor | None
                x, target = member.inputs(batch) if reads_rows(member) else (batch, None)
                parts = member.step(x, step, target)
                guard.check(parts["loss"], f"the loss of dictionary {names[i]} on {span}")  # type: ignore[arg-type]
                logs.append((names[i], parts))
            step += 1
            tokens_seen += tc.batch_size
            bar.update(tc.batch_size)
            if step % tc.log_interval == 0 or step == total_steps:
                guard.flush()
            if run_log is not None and (step % tc.log_interval == 0 or step == total_steps):
                lines = [(name, {key: float(value) for key, value in parts.items()}) for name, parts in logs]
                run_log.write(step, tokens_seen, time.perf_counter() - started, lines)
                bar.set_postfix({"loss": f"{lines[0][1]['loss']:.4g}", "l0": f"{lines[0][1]['l0']:.1f}"})
            if tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < total_steps:
                checkpoint()
        checkpoint()
        trained = all_member_objects({i: m.export(tokens_seen) for i, m in members.items()})
        for name, d in zip(names, trained):
            check_finite_weights(d.weights(), f"dictionary {name}")
        return trained
    finally:
        close = getattr(batches, "close", None)
        if callable(close):
            close()
        bar.close()
        if run_log is not None:
            run_log.close()
