"""The variational bound and its reweighted losses: per-step KL == weighted eps-MSE, weights agree
across eps/x0/v, the discretised decoder is a distribution, the full bound of an exact denoiser equals
its closed form, chunking over t changes nothing, and L_simple falls when training."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gen_jax.diffusion as gd
from gen_jax.data import toy
from gen_jax.diffusion import NoiseSchedule


def _noisy_setup(key, T=100, B=None, D=6):
    s = NoiseSchedule.linear(T, 1e-4 * 1000 / T, 0.02 * 1000 / T)
    t = jnp.arange(2, T + 1) if B is None else jax.random.randint(key, (B,), 2, T + 1)
    B = t.shape[0]
    k1, k2, k3 = jax.random.split(jax.random.fold_in(key, 7), 3)
    x0 = jax.random.normal(k1, (B, D))
    eps = jax.random.normal(k2, (B, D))
    eps_theta = eps + 0.3 * jax.random.normal(k3, (B, D))  # an imperfect denoiser's prediction
    return s, t, x0, eps, eps_theta


@pytest.mark.parametrize("variance", ["small", "large"])
def test_kl_term_equals_weighted_eps_mse(key, variance):
    """L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || N(mu_theta, sigma_t^2)) = beta_t^2/(2 sigma_t^2 alpha_t (1-abar_t))
    ||eps - eps_theta||^2 + C_t, with C_t = D/2 (log sigma_t^2/beta_tilde_t + beta_tilde_t/sigma_t^2 - 1)
    (C_t = 0 for sigma^2 = beta_tilde), for every t = 2..T."""
    s, t, x0, eps, eps_theta = _noisy_setup(key)
    D = x0.shape[1]
    xt = gd.q_sample(s, x0, t, eps)
    x0_hat = gd.x0_from_eps(s, xt, t, eps_theta)
    true_mean, true_var, true_logvar = gd.q_posterior(s, x0, xt, t)
    model_mean, _, _ = gd.q_posterior(s, x0_hat, xt, t)
    # The posterior mean at x0_hat is Ho et al.'s eps-form mean (x_t - beta_t/sqrt(1-abar_t) eps)/sqrt(alpha_t).
    beta, alpha, abar = (np.asarray(s.at(a, t), np.float64) for a in (s.betas, s.alphas, s.alpha_bars))
    eps_form = (np.asarray(xt) - (beta / np.sqrt(1 - abar))[:, None] * np.asarray(eps_theta)) / np.sqrt(alpha)[:, None]
    np.testing.assert_allclose(model_mean, eps_form, atol=2e-4)

    logvar = s.at(s.reverse_log_variance(variance), t)[:, None]  # [B, 1]
    kl = jnp.sum(gd.normal_kl(true_mean, true_logvar, model_mean, jnp.broadcast_to(logvar, x0.shape)), -1)
    sigma2 = np.exp(np.asarray(logvar[:, 0], np.float64))
    btilde = np.asarray(true_var[:, 0], np.float64)
    const = 0.5 * D * (np.log(sigma2 / btilde) + btilde / sigma2 - 1.0)
    if variance == "small":
        np.testing.assert_allclose(const, 0.0, atol=1e-5)
    weight = beta**2 / (2 * sigma2 * alpha * (1 - abar))
    weighted_mse = weight * np.sum((np.asarray(eps) - np.asarray(eps_theta)) ** 2, -1)
    np.testing.assert_allclose(np.asarray(kl) - const, weighted_mse, rtol=2e-3, atol=1e-4)
    # loss_weight('vlb') is the same weight (times T, per dimension).
    w = gd.loss_weight(s, t, parameterization="eps", weighting="vlb", variance=variance)
    np.testing.assert_allclose(np.asarray(w) / s.T, weight, rtol=1e-4)


def test_weightings_agree_across_parameterizations(key):
    """For one prediction expressed as eps, x0 or v, the 'vlb' and 'min_snr' losses are identical
    (they weight the same x0-space error); 'simple' differs by exactly SNR_t (eps) / SNR_t + 1 (v)."""
    s, t, x0, eps, eps_theta = _noisy_setup(key, B=64)

    @jax.jit
    def all_losses(x0, eps, eps_theta, t):
        xt = gd.q_sample(s, x0, t, eps)
        x0_hat = gd.x0_from_eps(s, xt, t, eps_theta)
        outputs = {"eps": eps_theta, "x0": x0_hat, "v": gd.v_from_x0_eps(s, x0_hat, t, eps_theta)}
        return {w: {p: gd.denoising_loss(s, out, x0, eps, t, parameterization=p, weighting=w)[0]
                    for p, out in outputs.items()} for w in gd.WEIGHTINGS}

    losses = all_losses(x0, eps, eps_theta, t)
    snr = s.at(s.snr, t)
    simple = losses["simple"]
    np.testing.assert_allclose(simple["eps"], snr * simple["x0"], rtol=5e-3)
    np.testing.assert_allclose(simple["v"], (snr + 1) * simple["x0"], rtol=5e-3)
    for weighting in ("vlb", "min_snr"):
        np.testing.assert_allclose(losses[weighting]["eps"], losses[weighting]["x0"], rtol=5e-3)
        np.testing.assert_allclose(losses[weighting]["v"], losses[weighting]["x0"], rtol=5e-3)
    # Min-SNR: x0-space weight min(SNR, 5), i.e. min(1, 5/SNR) on the eps loss.
    w = gd.loss_weight(s, t, parameterization="eps", weighting="min_snr", min_snr_gamma=5.0)
    np.testing.assert_allclose(w, jnp.minimum(1.0, 5.0 / snr), rtol=1e-5)


def test_discretized_decoder_is_a_distribution():
    """For several means and scales the 256 bin probabilities sum to 1, and an interior bin is
    ~ density x bin width where the Gaussian is wide and the bin lies in its bulk."""
    means, scales = np.meshgrid([-1.3, -1.0, 0.0, 0.31, 1.0], [1e-3, 0.05, 1.0, 5.0])
    means, scales = means.reshape(-1, 1), scales.reshape(-1, 1)  # [M, 1]
    x = np.broadcast_to(np.arange(256) * 2 / 255 - 1, (means.shape[0], 256))
    logp = np.asarray(gd.discretized_gaussian_log_likelihood(
        jnp.asarray(x, jnp.float32), jnp.asarray(np.broadcast_to(means, x.shape), jnp.float32),
        jnp.asarray(np.log(np.broadcast_to(scales, x.shape)), jnp.float32)), np.float64)
    assert np.all(logp <= 1e-6)
    np.testing.assert_allclose(np.exp(logp).sum(-1), 1.0, atol=1e-4)
    k = 128
    dens = np.exp(-0.5 * ((x[:, k] - means[:, 0]) / scales[:, 0]) ** 2) / (scales[:, 0] * np.sqrt(2 * np.pi))
    bulk = (scales[:, 0] >= 0.05) & (np.abs(x[:, k] - means[:, 0]) < 3 * scales[:, 0])
    assert bulk.sum() >= 6
    np.testing.assert_allclose(np.exp(logp[bulk, k]), dens[bulk] * 2 / 255, rtol=5e-3)


def _phi(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def _oracle_x0(params, x_t, t, label):
    """Predicts the true x_0 of example `label` (a memorising, exact denoiser)."""
    return params[label]


@pytest.mark.parametrize("variance", ["small", "large"])
def test_bound_of_exact_denoiser_matches_closed_form(key, variance):
    """With x0_hat = x_0: L_{t-1} = D/2 (log sigma_t^2/beta_tilde_t + beta_tilde_t/sigma_t^2 - 1) for t >= 2,
    L_0 = -sum_d log P(bin of x_0 | N(x_0, beta_tilde_2)), L_T = KL(N(sqrt(abar_T) x_0, 1 - abar_T) || N(0, 1))."""
    T = 40
    s = NoiseSchedule.linear(T, 1e-4 * 1000 / T, 0.02 * 1000 / T)
    u8 = jax.random.randint(key, (3, 4, 4, 1), 0, 256).astype(jnp.uint8).at[0, 0, 0, 0].set(0).at[1, 0, 0, 0].set(255)
    x = np.asarray(u8, np.float64) / 127.5 - 1.0
    params = jnp.asarray(x, jnp.float32)
    bound = jax.jit(gd.variational_bound, static_argnames=("apply_fn", "parameterization", "variance", "t_chunk"))
    out = bound(_oracle_x0, params, s, u8, jax.random.key(1), label=jnp.arange(3), parameterization="x0",
                variance=variance, t_chunk=7)
    D = 16
    b = np.asarray(s.betas, np.float64)
    abar = np.cumprod(1 - b)
    btilde = b[1:] * (1 - abar[:-1]) / (1 - abar[1:])  # t = 2..T
    sigma2 = btilde if variance == "small" else b[1:]
    kl_ref = 0.5 * D * (np.log(sigma2 / btilde) + btilde / sigma2 - 1.0)
    np.testing.assert_allclose(out["terms_nats"][:, 1:], np.broadcast_to(kl_ref, (3, T - 1)), atol=2e-4)
    sd = math.sqrt(btilde[0])  # sigma_1^2 = beta_tilde_2 for both variance choices
    p_mid = _phi(1 / 255 / sd) - _phi(-1 / 255 / sd)
    p_edge = _phi(1 / 255 / sd)
    k = np.asarray(u8).reshape(3, -1)
    dec_ref = -np.sum(np.where((k == 0) | (k == 255), math.log(p_edge), math.log(p_mid)), -1)
    np.testing.assert_allclose(out["decoder_nats"], dec_ref, rtol=1e-4)
    prior_ref = 0.5 * np.sum(-np.log(1 - abar[-1]) + (1 - abar[-1]) + abar[-1] * x.reshape(3, -1) ** 2 - 1, -1)
    np.testing.assert_allclose(out["prior_nats"], prior_ref, rtol=1e-3, atol=1e-6)
    total = prior_ref + dec_ref + kl_ref.sum()
    np.testing.assert_allclose(out["nll_nats"], total, rtol=1e-4)
    np.testing.assert_allclose(out["bits_per_dim"], total / (D * math.log(2)), rtol=1e-4)


def test_bound_is_independent_of_chunking(key):
    """All T terms are computed whatever t_chunk is (T = 30 with chunks of 1 and 7: padded)."""
    s = NoiseSchedule.cosine(30)
    x0 = jax.random.normal(key, (5, 2))

    def apply_fn(params, x_t, t, label):
        return params * x_t * jnp.sqrt(t.astype(jnp.float32))[:, None] / 6.0

    bound = jax.jit(gd.variational_bound, static_argnames=("apply_fn", "t_chunk"))
    outs = [bound(apply_fn, jnp.float32(0.7), s, x0, jax.random.key(3), t_chunk=c) for c in (1, 7)]
    for o in outs[1:]:
        np.testing.assert_allclose(o["terms_nats"], outs[0]["terms_nats"], rtol=1e-5, atol=1e-6)
    assert outs[0]["terms_nats"].shape == (5, 30)
    assert bool(jnp.all(outs[0]["terms_nats"][:, 1:] >= -1e-5)), "KL terms are non-negative"


def test_loss_at_init_is_unit_eps_mse(key):
    """A denoiser that predicts 0 (as a zero-initialised one does) has L_simple = E||eps||^2 / D = 1 (within 4 SE) and the
    x0 loss is the second moment of the data, which must be uint8 scaled to [-1, 1] inside; a
    class-conditional net demands labels."""
    net = gd.MLPDenoiser(hidden=16, num_blocks=1, time_dim=8, num_classes=3)
    s = NoiseSchedule.linear(100)
    u8 = jax.random.randint(key, (64, 16), 0, 256).astype(jnp.uint8)  # 8-bit data, flattened
    shapes = jax.eval_shape(net.init, key, jnp.zeros((1, 16)), jnp.ones((1,), jnp.int32), jnp.zeros((1,), jnp.int32))
    params = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes["params"])  # output layer is 0
    batch = {"x": u8, "label": jnp.arange(64) % 3}
    model = gd.DiffusionModel(net, s, (16,))
    loss, (metrics, _) = jax.jit(model.loss)(params, {}, batch, jax.random.key(2))
    assert abs(float(loss) - 1.0) < 4 * math.sqrt(2.0 / u8.size)
    assert set(metrics) == {"loss", "mse"}
    loss_x0, _ = jax.jit(gd.DiffusionModel(net, s, (16,), parameterization="x0").loss)(params, {}, batch, key)
    x = np.asarray(u8, np.float64) / 127.5 - 1
    np.testing.assert_allclose(float(loss_x0), np.mean(x**2), rtol=1e-4)
    with pytest.raises(ValueError, match="label"):  # raised while tracing: nothing is compiled
        jax.jit(model.loss)(params, {}, {"x": u8}, key)
    with pytest.raises(ValueError, match="weighting"):
        gd.DiffusionModel(net, s, (16,), weighting="snr")


def test_simple_loss_falls_when_training_mlp(key):
    """200 Adam steps of L_simple on ring8 halve the loss from its initial value of ~1."""
    dist = toy.ring8()
    net = gd.MLPDenoiser(hidden=32, num_blocks=1, time_dim=16)
    s = NoiseSchedule.linear(200, 5e-4, 0.1)
    params = jax.jit(net.init)(jax.random.key(0, impl="rbg"), jnp.zeros((1, 2)), jnp.ones((1,), jnp.int32))["params"]
    loss_fn = gd.DiffusionModel(net, s, (2,)).loss
    tx = optax.adam(1e-2)

    @jax.jit
    def step(params, opt, i):
        x = dist.sample(jax.random.fold_in(key, i), 128)
        (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(params, {}, {"x": x}, jax.random.fold_in(key, -i - 1))
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, loss

    opt = tx.init(params)
    losses = []
    for i in range(200):
        params, opt, loss = step(params, opt, i)
        losses.append(float(loss))
    first, last = losses[0], np.mean(losses[-50:])
    assert first > 0.85 and last < 0.5 * first, (first, last)
