"""One member of a sweep: a dictionary with its optimiser, schedules and latent statistics.

The trainer owns the stream; each member turns a batch into one optimiser step. Everything a member
holds is in `state_dict()`, so a checkpoint restores it exactly.

What the trainer asks of a member (and so what another module kind provides by subclassing
`SweepMember`, e.g. the cross-layer transcoder's `saekit.circuits.clt_training.CLTMember`): `inputs`
(its input and target from a batch of the stream), `objective.start` (initialise), `step`, `export`,
`state_dict` / `load_state_dict`. A spec names the member class that trains it (`member_class`);
`DictionarySpec` has none and gets this one. A subclass overrides `build_module` (the module trained:
it must offer `parameters()`, `method.after_step(module)`, `fold_activation_scale` and, for
`unit_norm_decoder`, the decoder upkeep of `Dictionary`) and `n_latents` (the width of the firing
statistics).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, cast

import torch
from torch import Tensor

from saekit.data.batching import SINGLE
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.methods import Encoding
from saekit.methods.dead_latents import squared_error
from saekit.spec import DictionarySpec
from saekit.training import normalization
from saekit.training.config import MAX_DEAD_TOKENS, RUN_DEFAULTS, ResolvedTraining
from saekit.training.distributed import Distributed
from saekit.training.l0_target import L0Controller
from saekit.training.objective import LocalObjective, Objective
from saekit.training.schedules import lr_factor, warmup_factor

MASK = "mask"  # key of the counted-token mask [n_sequences, T] in a stream of sequences


def _lookup(batch: dict[str, Tensor], key: str | None, spec: Any) -> Tensor:
    if key in batch and key != MASK:
        value = batch[key]
        # sequences [n, T, d] -> the counted rows, for dictionaries that read rows
        return value[batch[MASK].to(value.device).bool()] if value.ndim == 3 and MASK in batch else value
    if key is None and len(batch) == 1:
        return next(iter(batch.values()))
    raise SaekitError(f"dictionary {spec.name} needs activations of hookpoint {key!r} but the "
                      f"stream has {', '.join(sorted(batch)) or 'plain tensors'}: set each config's "
                      "hookpoint (and target_hookpoint / source_hookpoints) to names in the stream")


def member_inputs(spec: DictionarySpec, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
    """(input, target) of one dictionary from a batch: crosscoders concatenate their sources,
    transcoders read a separate target."""
    cfg, source = spec.dictionary, spec.source
    if SINGLE in batch and not source.source_hookpoints and not cfg.is_transcoder:
        x = batch[SINGLE].float()  # a plain-tensor stream feeds every dictionary, whatever its label
    elif source.source_hookpoints:
        x = torch.cat([_lookup(batch, key, spec).float() for key in source.source_hookpoints], dim=-1)
    else:
        x = _lookup(batch, source.hookpoint, spec).float()
    target = _lookup(batch, source.target_hookpoint, spec).float() if cfg.is_transcoder else None
    if x.shape[-1] != cfg.d_in:
        raise SaekitError(f"activations have width {x.shape[-1]} but dictionary {spec.name} "
                          f"has d_in={cfg.d_in}")
    if target is not None and target.shape[-1] != cfg.d_out:
        raise SaekitError(f"target activations have width {target.shape[-1]} but dictionary "
                          f"{spec.name} has d_out={cfg.d_out}")
    return x, target


class SweepMember:
    def __init__(self, spec: DictionarySpec, total_steps: int, device: str | torch.device = "cpu",
                 dist: Distributed | None = None, autocast: str = "none",
                 objective: Objective | None = None):
        self.spec = spec
        self.objective: Objective = objective or self.default_objective()
        self.cfg = spec.dictionary
        self.training = training = spec.resolved
        self.autocast = autocast == "bfloat16"
        self.dist = dist if dist is not None and dist.mode == "data" else None
        self.total_steps = total_steps
        self.device = torch.device(device)
        self.dictionary = self.build_module()
        # (each step sets the LR; a run-length default is known at the first step)
        self.optimizer = torch.optim.Adam(self.dictionary.parameters(), lr=training.lr or 0.0,
                                          betas=training.adam_betas, eps=training.adam_eps, fused=True)
        self.generator = torch.Generator().manual_seed(training.seed)
        d_in, d_out = self.widths()
        self.scale_in = torch.ones(d_in, device=self.device)
        self.scale_out = torch.ones(d_out, device=self.device)
        self.normalization_tokens = 0
        n = self.n_latents
        self.tokens_since_fired = torch.zeros(n, dtype=torch.long, device=self.device)
        self.tokens_trained = 0  # tokens this dictionary has stepped on (all ranks)
        self.no_dead_before = 0  # steps before this one cannot have dead latents (see _may_have_dead)
        # Firing counts over the current and the previous statistics window -> sparsity.safetensors.
        self.window_counts = torch.zeros(2, n, dtype=torch.float64, device=self.device)
        self.window_tokens = [0, 0]
        self.fired_since_resample = torch.zeros(n, dtype=torch.bool, device=self.device)
        self.method_state = self.dictionary.method.new_state()
        self.l0_controller = None if training.target_l0 is None else L0Controller(
            training.target_l0, total_steps, training.sparsity_warmup * total_steps, self.device)

    # ------------------------------------------------------------------------ what is trained, on what
    def build_module(self) -> Any:
        """The module this member trains: a `Dictionary`, or whatever module the objective builds for this
        spec (an attention replacement, offering the Dictionary calls used here: `method`,
        `fold_activation_scale`, `normalize_decoder`, `meta`, ...); other member kinds override this."""
        build = getattr(self.objective, "build_module", None)
        d = build(self.spec, self.device) if build is not None else \
            Dictionary(self.cfg, device=self.device, training=self.training)
        d.provenance = self.spec.source
        return d

    def default_objective(self) -> Objective:
        return LocalObjective()

    def widths(self) -> tuple[int, int]:
        """Widths of the (normalised) input and target rows."""
        return self.cfg.d_in, self.cfg.d_out or self.cfg.d_in

    @property
    def n_latents(self) -> int:
        """Latents whose firing is tracked (dead masks, densities)."""
        return self.cfg.d_sae

    def inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """(input, target) of this member from a batch of the stream."""
        return member_inputs(self.spec, batch)

    # --------------------------------------------------------------------------------------- start
    def start(self, first_batch: Tensor, first_target: Tensor | None = None) -> None:
        """Estimate the normalisation on the first rows and initialise the dictionary from them."""
        cfg, training = self.cfg, self.training
        x = first_batch.to(self.device, torch.float32)
        self.normalization_tokens = x.shape[0]
        self.scale_in = normalization.activation_scale(training.normalize_activations, x,
                                                       cfg.n_sources).to(self.device)
        target = None
        if first_target is not None:
            target = first_target.to(self.device, torch.float32)
            self.scale_out = normalization.activation_scale(training.normalize_activations,
                                                            target).to(self.device)
            target = target * self.scale_out
        else:
            self.scale_out = self.scale_in
        self.dictionary.initialize(x * self.scale_in, training, self.generator, target)

    # ---------------------------------------------------------------------------------------- step
    def step(self, x: Any, step: int, target: Tensor | None = None) -> dict[str, Tensor | float]:
        rows = self._rows(x)
        global_batch = rows * (self.dist.world if self.dist is not None else 1)
        if self.training.lr is None or self.training.dead_tokens is None:
            self._set_training(self.training.for_run(self.cfg, self.total_steps, self.total_steps * global_batch))
        training, d = self.training, self.dictionary
        assert training.lr is not None
        lr = training.lr * lr_factor(step, self.total_steps, training.lr_warmup * self.total_steps,
                                     training.lr_decay * self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        coefficient: float | Tensor = training.sparsity_coefficient * warmup_factor(
            step, training.sparsity_warmup * self.total_steps)
        if self.l0_controller is not None:
            coefficient = coefficient * self.l0_controller.multiplier()
        # AuxK runs on every aux_every-th step (at aux_every times its weight); ghost grads every step.
        cares = training.ghost_grads or (training.aux_k > 0 and step % training.aux_every == 0)
        dead_mask = self.dead_mask() if cares and self._may_have_dead(step, global_batch) else None

        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            result = self.objective.loss(self, x, target, coefficient, dead_mask)
        self.optimizer.zero_grad(set_to_none=True)
        result.total.backward()
        if self.dist is not None:
            self.dist.average_gradients(list(d.parameters()))
        if training.unit_norm_decoder:
            d.remove_parallel_decoder_grad()
        if training.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(d.parameters(), training.grad_clip)
        self.optimizer.step()
        if training.unit_norm_decoder:
            d.normalize_decoder()
        d.method.after_step(d)

        self._update_statistics(result.encoding, result.encoding.rows, step)
        if self.l0_controller is not None:
            l0 = result.encoding.mean_l0_tensor()
            if self.dist is not None:  # every rank steers by the global batch, so λ stays identical
                l0 = self.dist.sum(l0) / self.dist.world
            self.l0_controller.update(l0, step)
        if training.resample_every and (step + 1) % training.resample_every == 0:
            assert result.inputs is not None, "resampling needs the objective's normalised inputs"
            x, target = result.inputs
            if self.dist is not None:  # every rank must make the same random choices
                x = self.dist.gather_rows(x)
                target = None if target is None else self.dist.gather_rows(target)
            self.resample_dead_latents(x, target)
        # Tensors, not floats: reading a GPU value back every step would stall the queue; the
        # trainer converts them when it logs.
        parts: dict[str, Tensor | float] = dict(result.parts)
        parts.update(loss=result.total.detach(), lr=lr, sparsity_coefficient=coefficient,
                     l0=result.encoding.mean_l0_tensor())
        window = self.dead_window()
        parts.update(dead_fraction=(self.tokens_since_fired >= window).float().mean(), dead_window_tokens=window)
        return parts

    def dead_window(self) -> int:
        """The window of the logged dead fraction: `dead_tokens`, or every token so far while fewer have
        been seen. A logged latent is dead when it has not fired on the last `dead_window()` tokens, as an
        evaluated one is when it does not fire on the evaluation tokens; without the cap a short run (fewer
        tokens than dead_tokens) would log 0 dead however many latents never fired. Dead-latent care (AuxK,
        ghost grads) uses `dead_tokens` itself."""
        return max(1, min(self.dead_tokens, self.tokens_trained))

    @staticmethod
    def _rows(x: Any) -> int:
        """Tokens in a batch: rows of activations, or the counted positions of a batch of sequences."""
        if isinstance(x, Tensor):
            return x.shape[0]
        return int(x["mask"].sum()) if "mask" in x else int(next(iter(x.values())).shape[0])

    def _set_training(self, training: ResolvedTraining) -> None:
        """The training config with the run-length defaults filled (at the first step, when the global
        batch is known); the dictionary records the values used."""
        self.training = training
        self.dictionary.training_config = training

    @property
    def dead_tokens(self) -> int:
        """The dead window in tokens (the run-length default before the first step: 10M)."""
        return self.training.dead_tokens if self.training.dead_tokens is not None else MAX_DEAD_TOKENS

    def dead_mask(self) -> Tensor:
        return self.tokens_since_fired >= self.dead_tokens

    def _may_have_dead(self, step: int, global_batch: int) -> bool:
        """Whether any latent can be dead at `step`. Reading the counters back is a host sync, which
        on a GPU stalls every step; but a counter grows by at most one global batch per step, so one
        read of the largest tells how many steps must pass before any can reach `dead_tokens`, and
        those steps skip the check. The losses see exactly the dead masks they would otherwise."""
        if step < self.no_dead_before:
            return False
        oldest = int(self.tokens_since_fired.max())
        if oldest >= self.dead_tokens:
            return True
        self.no_dead_before = step + -(-(self.dead_tokens - oldest) // max(global_batch, 1))
        return False

    @torch.no_grad()
    def _update_statistics(self, enc: Encoding, batch: int, step: int) -> None:
        fired_counts = enc.firing_counts(self.n_latents)
        if self.dist is not None:
            fired_counts = self.dist.sum(fired_counts)
            batch *= self.dist.world
        fired = fired_counts > 0
        self.tokens_since_fired += batch
        self.tokens_trained += batch
        self.tokens_since_fired.masked_fill_(fired, 0)
        self.fired_since_resample |= fired
        window = max(1, self.total_steps // 10)
        if step % window == 0 and step > 0:
            self.window_counts[0] = self.window_counts[1]
            self.window_tokens[0] = self.window_tokens[1]
            self.window_counts[1].zero_()
            self.window_tokens[1] = 0
        self.window_counts[1] += fired_counts.to(torch.float64)
        self.window_tokens[1] += batch
        self.method_state.update(self.dictionary, enc, step, self.total_steps, self.training,
                                 None if self.dist is None else self.dist.min)

    # ---------------------------------------------------------------------------------- resampling
    @torch.no_grad()
    def resample_dead_latents(self, x: Tensor, target: Tensor | None = None) -> int:
        """Anthropic's resampling (docs/methods.md "Dead latents"), using the current batch as the pool.

        Latents silent since the last resample get a decoder row pointing at an input sampled with
        probability ∝ its squared reconstruction loss, an encoder column of that input scaled to 0.2 of
        the mean alive encoder norm, zero encoder biases, and zeroed Adam moments.
        """
        d = self.dictionary
        dead = ~self.fired_since_resample
        self.fired_since_resample.zero_()
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        losses = squared_error(x if target is None else target, d(x)).pow(2)
        if float(losses.sum()) <= 0:
            return 0
        picks = torch.multinomial(losses.cpu(), n_dead, replacement=True, generator=self.generator)
        inputs = x[picks.to(x.device)]
        if self.cfg.apply_b_dec_to_input:
            inputs = inputs - d.b_dec
        directions = inputs / inputs.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        alive = ~dead
        alive_norm = d.W_enc[:, alive].norm(dim=0).mean() if bool(alive.any()) else 1.0
        d.W_dec[dead] = directions * (d.W_dec[alive].norm(dim=-1).mean() if bool(alive.any()) else 1.0)
        d.W_enc[:, dead] = (directions * 0.2 * alive_norm).T
        biases = d.method.encoder_biases
        for name in biases:
            getattr(d, name)[dead] = 0.0
        for param, index in [(d.W_dec, dead), (d.W_enc, (slice(None), dead))] + \
                [(getattr(d, name), dead) for name in biases]:
            state = self.optimizer.state.get(param, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][index] = 0.0
        self.tokens_since_fired[dead] = 0
        return n_dead

    # ------------------------------------------------------------------------------------- export
    def firing_density(self) -> Tensor | None:
        tokens = sum(self.window_tokens)
        if tokens == 0:
            return None
        return (self.window_counts.sum(0) / tokens).float()

    def export(self, tokens_seen: int) -> Dictionary:
        """A copy in raw activation space (normalisation folded in), ready to save or use."""
        d = copy.deepcopy(self.dictionary)
        d.fold_activation_scale(self.scale_in, self.scale_out)
        d.meta.update(training_tokens=tokens_seen, normalization=normalization.record(
            self.training.normalize_activations, self.scale_in, self.scale_out, self.normalization_tokens))
        density = self.firing_density()
        if density is not None:
            d.log_feature_density = density.clamp_min(1e-10).log10()
        for param in d.parameters():
            param.requires_grad_(False)
        return d.eval()

    # --------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "dictionary": self.dictionary.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "scale_in": self.scale_in,
            "scale_out": self.scale_out,
            "normalization_tokens": self.normalization_tokens,
            "tokens_since_fired": self.tokens_since_fired,
            "tokens_trained": self.tokens_trained,
            "window_counts": self.window_counts,
            "window_tokens": list(self.window_tokens),
            "fired_since_resample": self.fired_since_resample,
            "method": self.method_state.state_dict(),
            **({"l0_controller": self.l0_controller.state_dict()} if self.l0_controller is not None else {}),
            "run_defaults": {key: getattr(self.training, key) for key in RUN_DEFAULTS},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dictionary.load_state_dict(state["dictionary"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.scale_in = state["scale_in"].to(self.device)
        self.scale_out = state["scale_out"].to(self.device)
        self.normalization_tokens = int(state["normalization_tokens"])
        self.tokens_since_fired.copy_(state["tokens_since_fired"])
        # checkpoints of earlier versions: a latent never fired has counted every token
        self.tokens_trained = int(state.get("tokens_trained", int(self.tokens_since_fired.max())))
        self.no_dead_before = 0
        self.window_counts.copy_(state["window_counts"])
        self.window_tokens = list(state["window_tokens"])
        self.fired_since_resample.copy_(state["fired_since_resample"])
        self.method_state.load_state_dict(state["method"])
        if self.l0_controller is not None:
            self.l0_controller.load_state_dict(state["l0_controller"])
        filled = {key: value for key, value in state.get("run_defaults", {}).items() if value is not None}
        if filled:  # the run-length defaults, as the first step set them
            self._set_training(cast(ResolvedTraining, dataclasses.replace(cast(Any, self.training), **filled)))
