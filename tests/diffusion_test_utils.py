"""Shared by the diffusion tests: a few hundred Adam steps of a model on the ring of 8 Gaussians."""

import jax

from gen_jax.data import get_toy
from gen_jax.train import TrainState, make_optimizer, make_train_step


def train_on_ring8(model, steps: int, metric: str, learning_rate: float = 2e-3):
    """``(final state, [metric per step], the toy distribution)`` of ``steps`` steps at batch 256."""
    params, model_state = model.init(jax.random.key(0))
    state = TrainState.create(params=params, tx=make_optimizer(learning_rate=learning_rate), key=jax.random.key(1),
                              model_state=model_state)
    step = make_train_step(model.loss)
    toy = get_toy("ring8")
    values = []
    for i in range(steps):
        state, m = step(state, {"x": toy.sample(jax.random.key(100 + i), 256)})
        values.append(float(m[metric]))
    return state, values, toy
