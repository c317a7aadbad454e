"""Peers: the standard configs' train steps written in PyTorch, timed next to gen_jax's in one run.

``python -m experiments.benchmark --peers torch`` adds the section (optional: it needs ``torch``, which is
not in gen_jax's requirements; without it the section is skipped with a note). Each *twin* is a PyTorch
model with exactly the parameter count of the gen_jax config (per player for GANs), the same loss
structure (the same objective, the same random draws per example) and the same optimizer (Adam with the
config's betas and eps, gradient clipping and EMA where the config has them), trained on a fixed
synthetic batch of the config's shape. What a twin does not copy: learning-rate schedules (a constant
rate costs the same), the non-finite-update guard (one reduction over the gradients) and, mostly,
gen_jax's initialisation (timing only; the flow twins do copy the zero-initialised last layers and
ActNorm's data-dependent start, one forward pass at build time, so their first losses match gen_jax's).

A twin module ``experiments/benchmark/peers/<family>.py`` has one builder per config,
``build(config, batch, compile) -> Twin``: ``batch`` is :func:`experiments.benchmark.tasks.example_batch`
(numpy; ``'x'`` float32 [B, 2] for toy data, uint8 [B, H, W, C] images with ``'label'``), ``compile``
wraps the loss in ``torch.compile`` (the optimizer stays eager). A builder raises ``NotImplementedError``
for a config option its twin does not mirror (the benchmark records that instead of a timing).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import numpy as np

# config name -> "module:function" of its twin's builder (module relative to this package)
TWINS = {
    "realnvp_toy": "flows:realnvp_toy",
    "glow_mnist": "flows:glow_mnist",
    "ddpm_toy": "diffusion:ddpm_toy",
    "ddpm_mnist": "diffusion:ddpm_mnist",
    "vae_toy": "vae:vae_toy",
    "vae_conv_mnist": "vae:vae_conv_mnist",
    "gan_ring8": "gan:gan_ring8",
    "dcgan_mnist": "gan:dcgan_mnist",
}


@dataclasses.dataclass
class Twin:
    """A PyTorch twin of one config's train step.

    Attributes:
      players: the modules whose parameters are trained, by player as
        :func:`experiments.benchmark.tasks.param_trees` names them: ``{'params': [...]}`` or
        ``{'G': [...], 'D': [...]}``.
      step: one training step on the fixed batch (forward, loss, backward, optimizer update); returns
        the loss as a tensor (the caller synchronises).
    """

    players: dict[str, list]
    step: Callable[[], Any]

    def param_counts(self) -> dict[str, int]:
        """Trainable parameters per player (compare :func:`experiments.benchmark.per_config.param_counts`)."""
        return {name: sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)
                for name, modules in self.players.items()}


def torch_missing() -> str | None:
    """Why the torch peers cannot run here (``None``: torch imports)."""
    try:
        importlib.import_module("torch")
    except ImportError as e:
        return f"torch is not installed ({e}); pip install torch to time the PyTorch twins"
    return None


def set_torch_threads() -> int:
    """PyTorch's intra-op threads set to the cores this process may use (as XLA's CPU client uses them)."""
    import os

    import torch

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(threads)
    return threads


def build(name: str, config, batch: dict, compile: bool = False) -> Twin:
    """The twin of config ``name`` (a key of :data:`TWINS`).

    Raises:
      KeyError: no twin for that config.
      NotImplementedError: the config sets an option the twin does not mirror.
    """
    import torch

    if name not in TWINS:
        raise KeyError(f"no PyTorch twin for config {name!r}; twins exist for {sorted(TWINS)}")
    module, fn = TWINS[name].split(":")
    torch.manual_seed(0)
    return getattr(importlib.import_module(f"{__name__}.{module}"), fn)(config, batch, compile)


# -- what every twin shares --------------------------------------------------------------------------


class Updater:
    """The optimizer of one player as gen_jax builds it from ``config.optim`` (or ``config.d_optim``):
    Adam/AdamW with the config's learning rate, betas and eps, global-norm gradient clipping when
    ``grad_clip`` > 0, and an EMA of the parameters when ``ema_decay`` > 0 (with gen_jax's warm-up,
    ``min(decay, (1 + t) / (10 + t))``)."""

    def __init__(self, modules: list, optim, ema_decay: float | None = None):
        import torch

        self.params = [p for m in modules for p in m.parameters() if p.requires_grad]
        if optim.optimizer not in ("adam", "adamw"):
            raise NotImplementedError(f"twins mirror Adam/AdamW, not optim.optimizer={optim.optimizer!r}")
        kwargs = dict(lr=optim.learning_rate, betas=(optim.b1, optim.b2), eps=optim.eps,
                      weight_decay=optim.weight_decay or 0.0, foreach=True)
        self.opt = (torch.optim.AdamW if optim.optimizer == "adamw" else torch.optim.Adam)(self.params, **kwargs)
        self.clip = float(optim.get("grad_clip", 0.0) or 0.0)
        self.ema_decay = float(optim.get("ema_decay", 0.0) or 0.0) if ema_decay is None else ema_decay
        self.ema = [p.detach().clone() for p in self.params] if self.ema_decay > 0 else None
        self.t = 0

    def __call__(self, loss) -> None:
        import torch

        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        self.opt.step()
        if self.ema is not None:
            decay = min(self.ema_decay, (1.0 + self.t) / (10.0 + self.t))
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - decay)
        self.t += 1


def one_player(modules: list, loss_fn: Callable, batch, optim, compile: bool) -> Twin:
    """The twin of a one-player step: ``loss_fn(batch)`` (under ``torch.compile`` when ``compile``), then
    the :class:`Updater` of ``modules`` over ``optim``."""
    loss_fn = maybe_compile(loss_fn, compile)
    update = Updater(modules, optim)

    def step():
        loss = loss_fn(batch)
        update(loss)
        return loss.detach()

    return Twin({"params": modules}, step)


def maybe_compile(fn: Callable, compile: bool) -> Callable:
    """``torch.compile(fn)`` (inductor, the default backend) when ``compile``, else ``fn``."""
    import torch

    return torch.compile(fn) if compile else fn


def images(batch: dict):
    """The batch's uint8 images as a float32 tensor [B, C, H, W] in [0, 255] (PyTorch's layout)."""
    import torch

    return torch.from_numpy(np.array(batch["x"])).permute(0, 3, 1, 2).float().contiguous()


def points(batch: dict):
    """The batch's toy points as a float32 tensor [B, D]."""
    import torch

    return torch.from_numpy(np.array(batch["x"], np.float32))

