"""Figures: one interface, chosen by name in ``config.eval.figures``.

A figure is ``fn(ctx, key, outdir) -> [png paths]`` (:class:`experiments.tasks.base.Context`); one that
does not apply to the data (e.g. a toy picture on images) returns no path. The runner draws samples,
curves and density panels itself; these are the family pictures.
"""

from __future__ import annotations

from typing import Callable

from experiments.figures import diffusion, flows, gan, vae

FIGURES: dict[str, Callable] = {
    "temperature_grid": flows.temperature_grid,
    "latents": flows.latents,
    "ddpm_vs_ddim": diffusion.ddpm_vs_ddim,
    "log_snr": diffusion.log_snr,
    "reconstructions": vae.reconstructions,
    "vae_latent": vae.vae_latent,
    "gan_seeds": gan.gan_seeds,
    "gan_discriminator": gan.gan_discriminator,
    "gan_interpolation": gan.gan_interpolation,
}


def check(names) -> list[Callable]:
    """The figure functions named by ``names`` (``config.eval.figures``), checked against the registry."""
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise ValueError(f"config.eval.figures has {unknown}; expected names among {sorted(FIGURES)}")
    return [FIGURES[n] for n in names]
