"""RealNVP on a 2D toy distribution (ring8 by default): 8 affine couplings with alternating masks,
MLP conditioners (2 x 128), bounded log-scales, exact NLL. ``get_config('smoke')`` runs in seconds
on CPU. Other toy data: ``--config.data.name=grid25`` (or any name in gen_jax.data.TOY_DATASETS).

    python -m experiments.train --config experiments/configs/realnvp_toy.py --workdir runs/realnvp_toy

The run reports the held-out ``nll_nats``; the true entropy of the data (its lower bound) is in the
summary as ``entropy_nats`` (ring8: -2.91 nats).
"""

from experiments.configs.common import base_config, shrink_for_smoke


def toy_flow_config(arch: str, *, num_steps: int = 20_000, learning_rate: float = 1e-3):
    """The common part of the toy flow configs."""
    c = base_config("flow", data="ring8", batch_size=256, num_steps=num_steps, learning_rate=learning_rate)
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 0  # not needed on 2D data; keeps cosine valid for very short runs
    c.optim.grad_clip = 100.0  # only against rare outlier batches; typical norms are far smaller
    c.model.arch = arch
    c.model.init_batch = 512
    c.data.num_eval = 10_000
    c.train.log_every = 200
    c.train.eval_every = 5000
    c.train.sample_every = 5000
    return c


def smoke(c):
    """Shrinks a toy flow config to seconds on CPU."""
    shrink_for_smoke(c, num_steps=20)
    c.model.hidden = (16, 16)
    c.model.num_layers = 2
    c.model.init_batch = 64
    c.train.eval_every = 0
    c.train.sample_every = 0
    return c


def get_config(arg=None):
    c = toy_flow_config("realnvp")
    c.model.num_layers = 8
    c.model.hidden = (128, 128)
    c.model.max_log_scale = 3.0
    c.model.actnorm = False
    if arg == "smoke":
        smoke(c)
    elif arg:
        raise ValueError(f"realnvp_toy: unknown config argument {arg!r}; expected 'smoke' or nothing.")
    return c
