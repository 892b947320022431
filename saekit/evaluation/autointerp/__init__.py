"""Autointerp through any OpenAI-compatible chat endpoint (docs/evaluation.md "Autointerp")."""

from saekit.evaluation.autointerp.client import ChatClient, Usage
from saekit.evaluation.autointerp.run import AutointerpOptions, autointerp, choose_latents
from saekit.evaluation.autointerp.windows import SamplingOptions

__all__ = ["AutointerpOptions", "ChatClient", "SamplingOptions", "Usage", "autointerp", "choose_latents"]
