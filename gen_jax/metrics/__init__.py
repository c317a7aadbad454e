"""Metrics usable by every family: mode coverage; likelihood units; Frechet distance."""

from gen_jax.metrics.modes import mode_coverage

__all__ = ["mode_coverage"]
