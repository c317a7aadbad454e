"""The engine's two-player step trains the GAN: on the 8-Gaussian ring, generated samples move
toward the data's modes (mean distance to the nearest mode falls), for two seeds trained at once."""

import jax
import jax.numpy as jnp
import numpy as np

from gen_jax import gan
from gen_jax.data import toy
from gen_jax.train import TwoPlayerState, make_optimizer, make_two_player_step

LATENT = 4


def _init(key, model):
    params, model_state = model.init(key, {"x": jnp.zeros((1, 2))})
    g_key, d_key = jax.random.split(jax.random.fold_in(key, 1))
    tx = make_optimizer(learning_rate=5e-3, b1=0.5, b2=0.99)
    return TwoPlayerState.create(params=params, model_state=model_state, g_tx=tx, d_tx=tx, g_key=g_key,
                                 d_key=d_key, ema_decay=0.9)


def _mean_distance_to_modes(x, means):
    d = jnp.sqrt(jnp.sum(jnp.square(x[:, None, :] - means[None]), axis=-1))  # [N, K]
    return float(jnp.mean(jnp.min(d, axis=1)))


def test_two_player_step_moves_samples_to_the_ring():
    ring = toy.ring8()
    means = jnp.asarray(ring.means, jnp.float32)
    g = gan.MLPGenerator(hidden=(64, 64))
    d = gan.MLPDiscriminator(hidden=(64, 64))
    model = gan.GAN(g, d, latent_dim=LATENT, loss="non_saturating", r1_weight=0.1)
    step = make_two_player_step(model.d_loss, model.g_loss, replicas=True)
    state = jax.jit(jax.vmap(lambda k: _init(k, model)))(jax.random.split(jax.random.key(0), 2))  # 2 seeds
    sample = jax.jit(jax.vmap(lambda p: gan.generate(g, p, jax.random.key(9), 1000, latent_dim=LATENT)))
    before = [_mean_distance_to_modes(x, means) for x in sample(state.g.params)]

    @jax.jit
    def train(state, key):
        def body(st, k):
            st, metrics = step(st, {"x": ring.sample(k, 128)})
            return st, metrics["d_loss"]

        return jax.lax.scan(body, state, jax.random.split(key, 600))

    state, d_losses = train(state, jax.random.key(1))
    after = [_mean_distance_to_modes(x, means) for x in sample(state.g.params)]
    after_ema = [_mean_distance_to_modes(x, means) for x in sample(state.g.ema_params)]
    assert np.all(np.isfinite(np.asarray(d_losses)))
    assert int(np.max(state.g.step)) == 600
    for b, a, e in zip(before, after, after_ema):
        assert b > 1.0  # a fresh generator sits near the origin, ~2 from the ring
        assert a < 0.4 * b, (before, after)
        assert e < 0.4 * b, (before, after_ema)


def test_spectral_norm_discriminator_trains_through_the_engine():
    ring = toy.ring8()
    g = gan.MLPGenerator(hidden=(32,))
    d = gan.MLPDiscriminator(hidden=(32,), spectral_norm=True)
    model = gan.GAN(g, d, latent_dim=LATENT, loss="hinge", n_critic=2)
    step = make_two_player_step(model.d_loss, model.g_loss, n_critic=model.n_critic)
    state = jax.jit(lambda k: _init(k, model))(jax.random.key(3))
    u0 = np.asarray(state.d.model_state["batch_stats"]["SpectralNorm_0"]["Dense_0/kernel/u"])  # step donates state
    state, metrics = step(state, {"x": ring.sample(jax.random.key(4), 64)})
    state, metrics = step(state, {"x": ring.sample(jax.random.key(5), 64)})
    assert int(state.d.step) == 4 and int(state.g.step) == 2  # n_critic D updates per G update
    assert np.isfinite(float(metrics["d_loss"])) and np.isfinite(float(metrics["g_loss"]))
    assert int(metrics["skipped"]) == 0
    u1 = state.d.model_state["batch_stats"]["SpectralNorm_0"]["Dense_0/kernel/u"]
    assert float(jnp.max(jnp.abs(u1 - u0))) > 1e-6  # the power-iteration state is carried
