"""One member of a sweep: a dictionary with its optimiser, schedules and latent statistics.

The trainer owns the stream; each member turns a batch into one optimiser step. Everything a member
holds is in `state_dict()`, so a checkpoint restores it exactly.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor

from saekit.config import DictionaryConfig
from saekit.dictionary import Dictionary, Encoding
from saekit.losses import squared_error, training_loss
from saekit.training.distributed import Distributed


def lr_factor(step: int, total_steps: int, warmup: float, decay: float) -> float:
    """Linear warm-up from 0 over the first `warmup` fraction, linear decay to 0 over the last `decay`."""
    warmup_steps = warmup * total_steps
    decay_steps = decay * total_steps
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay_steps > 0 and step >= total_steps - decay_steps:
        return max(0.0, (total_steps - step) / decay_steps)
    return 1.0


def activation_scale(method: str, x: Tensor, n_blocks: int = 1) -> Tensor:
    """Per-dimension scale [d]: one scalar per block (crosscoder source), estimated on the batch x."""
    blocks = x.float().reshape(x.shape[0], n_blocks, -1)
    width = blocks.shape[-1]
    norms = blocks.norm(dim=-1)  # [B, n_blocks]
    if method == "mean_norm_sqrt_d":
        scales = math.sqrt(width) / norms.mean(0).clamp_min(1e-12)
    elif method == "mean_squared_norm_1":
        scales = 1.0 / norms.pow(2).mean(0).sqrt().clamp_min(1e-12)
    else:
        scales = torch.ones(n_blocks)
    return scales.repeat_interleave(width)


class SweepMember:
    def __init__(self, cfg: DictionaryConfig, total_steps: int, device: str | torch.device = "cpu",
                 dist: Distributed | None = None, autocast: str = "none"):
        self.cfg = cfg
        self.autocast = autocast == "bfloat16"
        self.dist = dist if dist is not None and dist.mode == "data" else None
        self.total_steps = total_steps
        self.device = torch.device(device)
        self.dictionary = Dictionary(cfg, device=self.device)
        self.optimizer = torch.optim.Adam(self.dictionary.parameters(), lr=cfg.lr,
                                          betas=cfg.adam_betas, eps=cfg.adam_eps,
                                          fused=True)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.scale_in = torch.ones(cfg.d_in, device=self.device)
        self.scale_out = torch.ones(cfg.d_out, device=self.device)
        self.tokens_since_fired = torch.zeros(cfg.d_sae, dtype=torch.long, device=self.device)
        self.no_dead_before = 0  # steps before this one cannot have dead latents (see _may_have_dead)
        # Firing counts over the current and the previous statistics window -> sparsity.safetensors.
        self.window_counts = torch.zeros(2, cfg.d_sae, dtype=torch.float64, device=self.device)
        self.window_tokens = [0, 0]
        self.fired_since_resample = torch.zeros(cfg.d_sae, dtype=torch.bool, device=self.device)
        self.threshold_ema = 0.0  # BatchTopK: EMA of the batch's smallest selected activation
        self.threshold_updates = 0

    # --------------------------------------------------------------------------------------- start
    def start(self, first_batch: Tensor, first_target: Tensor | None = None) -> None:
        """Estimate the normalisation on the first batch and initialise the dictionary from it."""
        cfg = self.cfg
        x = first_batch.to(self.device, torch.float32)
        self.scale_in = activation_scale(cfg.normalize_activations, x, cfg.n_sources).to(self.device)
        target = None
        if first_target is not None:
            target = first_target.to(self.device, torch.float32)
            self.scale_out = activation_scale(cfg.normalize_activations, target).to(self.device)
            target = target * self.scale_out
        else:
            self.scale_out = self.scale_in
        self.dictionary.initialize(x * self.scale_in, self.generator, target)

    # ---------------------------------------------------------------------------------------- step
    def step(self, x: Tensor, step: int, target: Tensor | None = None) -> dict[str, Tensor | float]:
        cfg, d = self.cfg, self.dictionary
        x = x.to(self.device, torch.float32) * self.scale_in
        if target is not None:
            target = target.to(self.device, torch.float32) * self.scale_out
        lr = cfg.lr * lr_factor(step, self.total_steps, cfg.lr_warmup, cfg.lr_decay)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        warmup_steps = cfg.sparsity_warmup * self.total_steps
        coefficient = cfg.sparsity_coefficient * (min(1.0, (step + 1) / warmup_steps)
                                                  if warmup_steps > 0 else 1.0)
        dead_mask = self.dead_mask() if (cfg.aux_k > 0 or cfg.ghost_grads) and \
            self._may_have_dead(step, x.shape[0] * (self.dist.world if self.dist is not None else 1)) \
            else None

        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            result = training_loss(d, x, coefficient, dead_mask, target)
        self.optimizer.zero_grad(set_to_none=True)
        result.total.backward()
        if self.dist is not None:
            self.dist.average_gradients(list(d.parameters()))
        if cfg.unit_norm_decoder:
            d.remove_parallel_decoder_grad()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(d.parameters(), cfg.grad_clip)
        self.optimizer.step()
        if cfg.unit_norm_decoder:
            d.normalize_decoder()
        if cfg.method == "jumprelu":
            with torch.no_grad():
                d.threshold.clamp_(min=0.0)

        self._update_statistics(result.encoding, x.shape[0], step)
        if cfg.resample_every and (step + 1) % cfg.resample_every == 0:
            if self.dist is not None:  # every rank must make the same random choices
                x = self.dist.gather_rows(x)
                target = None if target is None else self.dist.gather_rows(target)
            self.resample_dead_latents(x, target)
        # Tensors, not floats: reading a GPU value back every step would stall the queue; the
        # trainer converts them when it logs.
        parts: dict[str, Tensor | float] = dict(result.parts)
        parts.update(loss=result.total.detach(), lr=lr, sparsity_coefficient=coefficient,
                     l0=result.encoding.mean_l0_tensor(), dead_fraction=self.dead_mask().float().mean())
        return parts

    def dead_mask(self) -> Tensor:
        return self.tokens_since_fired >= self.cfg.dead_tokens

    def _may_have_dead(self, step: int, global_batch: int) -> bool:
        """Whether any latent can be dead at `step`. Reading the counters back is a host sync, which
        on a GPU stalls every step; but a counter grows by at most one global batch per step, so one
        read of the largest tells how many steps must pass before any can reach `dead_tokens`, and
        those steps skip the check. The losses see exactly the dead masks they would otherwise."""
        if step < self.no_dead_before:
            return False
        oldest = int(self.tokens_since_fired.max())
        if oldest >= self.cfg.dead_tokens:
            return True
        self.no_dead_before = step + -(-(self.cfg.dead_tokens - oldest) // max(global_batch, 1))
        return False

    @torch.no_grad()
    def _update_statistics(self, enc: Encoding, batch: int, step: int) -> None:
        fired_counts = enc.firing_counts(self.cfg.d_sae)
        if self.dist is not None:
            fired_counts = self.dist.sum(fired_counts)
            batch *= self.dist.world
        fired = fired_counts > 0
        self.tokens_since_fired += batch
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
        if self.cfg.method in ("batchtopk", "matryoshka") and \
                step >= self.cfg.threshold_start * self.total_steps:
            selected = enc.active_values()
            scale = self.dictionary.selection_scale()
            if scale is not None and enc.codes is not None:
                selected = (enc.codes.values.detach() * scale[enc.codes.cols])
                selected = selected[selected > 0]
            smallest = float(selected.min()) if selected.numel() else math.inf
            if self.dist is not None:
                smallest = self.dist.min(smallest)
            if math.isfinite(smallest):
                # The EMA spans at most ~the last 10% of the run: a short run's activations drift, and
                # a long horizon then averages in early thresholds (measured: inference L0 22 for k = 32
                # after 137 steps with β = 0.999). Long runs keep the configured β.
                beta = min(self.cfg.threshold_ema, 1.0 - 10.0 / max(self.total_steps, 20))
                self.threshold_ema = beta * self.threshold_ema + (1 - beta) * smallest
                self.threshold_updates += 1
                # Bias-corrected EMA (as Adam does), so early steps are not pulled towards 0.
                estimate = self.threshold_ema / (1 - beta ** self.threshold_updates)
                scale = self.dictionary.selection_scale()
                if scale is None:
                    self.dictionary.threshold.fill_(estimate)
                else:  # crosscoders select on f·norm, so each latent's own threshold is θ/norm
                    self.dictionary.threshold.copy_(estimate / scale.clamp_min(1e-12))

    # ---------------------------------------------------------------------------------- resampling
    @torch.no_grad()
    def resample_dead_latents(self, x: Tensor, target: Tensor | None = None) -> int:
        """Anthropic's resampling (METHODS §1), using the current batch as the pool of inputs.

        Latents silent since the last resample get a decoder row pointing at an input sampled with
        probability ∝ its squared reconstruction loss, an encoder column of that input scaled to 0.2 of
        the mean alive encoder norm, a zero bias, and zeroed Adam moments.
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
        bias_names = ["b_gate", "b_mag", "r_mag"] if self.cfg.method == "gated" else ["b_enc"]
        for name in bias_names:
            getattr(d, name)[dead] = 0.0
        for param, index in [(d.W_dec, dead), (d.W_enc, (slice(None), dead))] + \
                [(getattr(d, name), dead) for name in bias_names]:
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
        d.meta.update(activation_scale=_compact(self.scale_in), training_tokens=tokens_seen,
                      target_scale=_compact(self.scale_out),
                      normalize_activations=self.cfg.normalize_activations)
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
            "tokens_since_fired": self.tokens_since_fired,
            "window_counts": self.window_counts,
            "window_tokens": list(self.window_tokens),
            "fired_since_resample": self.fired_since_resample,
            "threshold_ema": self.threshold_ema,
            "threshold_updates": self.threshold_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dictionary.load_state_dict(state["dictionary"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.scale_in = state["scale_in"].to(self.device)
        self.scale_out = state["scale_out"].to(self.device)
        self.tokens_since_fired.copy_(state["tokens_since_fired"])
        self.no_dead_before = 0
        self.window_counts.copy_(state["window_counts"])
        self.window_tokens = list(state["window_tokens"])
        self.fired_since_resample.copy_(state["fired_since_resample"])
        self.threshold_ema = float(state["threshold_ema"])
        self.threshold_updates = int(state["threshold_updates"])


def _compact(scale: Tensor) -> float | list[float]:
    """A scale vector as recorded in the config: one number, or one per source block."""
    blocks = torch.unique_consecutive(scale.cpu())
    return float(blocks[0]) if blocks.numel() == 1 else [float(v) for v in blocks]
