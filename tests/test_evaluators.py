"""Evaluators (experiments/evaluators) measure what they claim, on any family through the one context."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import evaluators
from experiments.evaluators.bound import kl_by_decade
from experiments.configs import ddpm_mnist, gan_grid25, realnvp_toy, vae_mnist, vae_toy
from experiments.run import build_seeds
from experiments.tasks.base import DataSpec
from gen_jax import vae
from gen_jax.data import toy

MNIST = DataSpec(kind="image", shape=(28, 28, 1), name="mnist", num_classes=10, num_train=64)
RING = DataSpec(kind="toy", shape=(2,), name="ring8", toy=toy.ring8())


def _context(config, data, batches=()):
    seeds = build_seeds(config, data)
    state = seeds.init(jax.random.key(0))
    batches = list(batches)
    return seeds, state, seeds.context(data, config.eval, lambda: iter(batches), len(batches), state=state)


def test_vae_toy_log_density_integrates_to_one():
    """exp of the importance-sampled log p(x) is an unbiased estimate of p(x), so its integral over
    the plane (Riemann sum, 200 x 200 grid on [-8, 8]^2) is 1 up to Monte Carlo and grid error."""
    _, _, ctx = _context(vae_toy.get_config("smoke"), RING)
    xs = np.linspace(-8, 8, 200, dtype=np.float32)
    grid = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2)
    log_p = np.asarray(ctx.log_density(ctx.params[0], jnp.asarray(grid)), np.float64)
    assert log_p.shape == (200 * 200,) and np.all(np.isfinite(log_p))
    mass = np.exp(log_p).sum() * (xs[1] - xs[0]) ** 2
    assert abs(mass - 1.0) < 0.05, mass


@pytest.mark.parametrize("name, half_width", [("fm_toy", 8.0), ("vdm_toy", 48.0)])
def test_diffusion_toy_ode_log_density_integrates_to_one(name, half_width):
    """The density panel's log p(x) of a diffusion model (the probability-flow ODE's change of variables,
    at the panel's tolerance) integrates to one over the plane: Riemann sum on a 64 x 64 grid (the panel's)
    over a square that holds the untrained model's mass (the VDM's spreads ~9 wide)."""
    from experiments.configs import fm_toy, vdm_toy

    _, _, ctx = _context({"fm_toy": fm_toy, "vdm_toy": vdm_toy}[name].get_config("smoke"), RING)
    assert ctx.density_resolution == 64
    xs = np.linspace(-half_width, half_width, ctx.density_resolution, dtype=np.float32)
    grid = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2)
    log_p = np.asarray(ctx.log_density(ctx.params[0], jnp.asarray(grid)), np.float64)
    assert log_p.shape == (len(grid),) and np.all(np.isfinite(log_p))
    mass = np.exp(log_p).sum() * (xs[1] - xs[0]) ** 2
    assert abs(mass - 1.0) < 0.03, mass


def _mnist_batches(seed, *sizes):
    rng = np.random.default_rng(seed)
    return [{"x": rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)} for n in sizes]


def test_importance_nll_reports_consistent_nats():
    """Deterministic for a key, the test set binarised the same way every time, bits/dim = nll / (D ln 2);
    the K-sample IS estimate is below the single-sample -ELBO; samples are images in [0, 1]."""
    config = vae_mnist.get_config("smoke")
    seeds, _, ctx = _context(config, MNIST, _mnist_batches(0, 32, 32))
    ev = evaluators.build(["importance_nll"], config.eval, ctx)[0]
    a, b = ev(ctx.params[0], jax.random.key(1)), ev(ctx.params[0], jax.random.key(1))
    assert a == b
    assert a["num_examples"] == 64 and a["iwae_k"] == config.eval.iwae_k
    np.testing.assert_allclose(a["bits_per_dim"], a["nll_nats"] / (784 * np.log(2)), rtol=1e-6)
    np.testing.assert_allclose(-a["elbo_nats"], a["recon_nats"] + a["kl"], rtol=1e-5)
    assert a["nll_nats"] < -a["elbo_nats"]
    samples = ctx.sample(jax.random.key(2), 5)
    assert samples.shape == (1, 5, 28, 28, 1) and samples.min() >= 0 and samples.max() <= 1


def test_importance_nll_standard_error_over_examples():
    """nll_nats_se is the standard error of the mean over test examples (sample std with ddof=1 over
    sqrt(n)): for two examples it is |nll_0 - nll_1| / 2. The first batch is evaluated alone with the
    same key and batch index, which gives nll_0; nll_1 follows from the mean."""
    config = vae_mnist.get_config("smoke")
    b0, b1 = _mnist_batches(1, 1, 1)
    _, _, both_ctx = _context(config, MNIST, [b0, b1])
    _, _, one_ctx = _context(config, MNIST, [b0])
    key = jax.random.key(3)
    both = evaluators.build(["importance_nll"], config.eval, both_ctx)[0](both_ctx.params[0], key)
    nll0 = evaluators.build(["importance_nll"], config.eval, one_ctx)[0](one_ctx.params[0], key)["nll_nats"]
    nll1 = 2 * both["nll_nats"] - nll0
    assert abs(nll0 - nll1) > 1.0  # two different images
    np.testing.assert_allclose(both["nll_nats_se"], abs(nll0 - nll1) / 2, rtol=1e-3)


@pytest.mark.parametrize("rows_per_call,num_seeds", [(0, 1), (12, 2)])
def test_importance_nll_in_short_calls_equals_the_whole_batch_estimate(rows_per_call, num_seeds):
    """The K importance samples run as one call per chunk (and per row block): every seed's NLL equals
    the one-call library estimate, vae.vae_log_likelihood on the same binarised batch with the same key,
    and the summary over seeds is their mean and std."""
    config = vae_mnist.get_config("smoke")
    config.eval.rows_per_call = rows_per_call  # 32 images: blocks of 12, 12, 8
    config.num_seeds = num_seeds
    (batch,) = _mnist_batches(2, 32)
    seeds, _, ctx = _context(config, MNIST, [batch])
    got = evaluators.evaluate(evaluators.build(["importance_nll"], config.eval, ctx), ctx, jax.random.key(4))
    model = seeds.model
    x = model.preprocess(jnp.asarray(batch["x"]), jax.random.fold_in(jax.random.key(config.eval.binarize_seed), 0))
    is_key = jax.random.split(jax.random.fold_in(jax.random.key(4), 0))[0]
    nlls = [-float(jnp.mean(vae.vae_log_likelihood(model.vae, p, x, is_key, likelihood=model.likelihood,
                                                    num_samples=config.eval.iwae_k, chunk_size=config.eval.chunk_size)))
            for p in ctx.params]
    assert config.eval.iwae_k > config.eval.chunk_size  # several chunks
    assert len(ctx.params) == num_seeds and (num_seeds == 1 or nlls[0] != nlls[1])  # the seeds differ
    np.testing.assert_allclose(got["nll_nats"], np.mean(nlls), rtol=1e-5)
    if num_seeds > 1:
        np.testing.assert_allclose(got["nll_nats_std"], np.std(nlls), rtol=1e-4, atol=1e-6)
        assert got["num_seeds"] == num_seeds


def test_bound_standard_error_over_examples(monkeypatch):
    """The bound's bits_per_dim_se is std(ddof=1) / sqrt(n) of the per-example bound over the
    ``eval.bound_examples`` examples, with the padding of the last bound batch left out. The bound is
    replaced by a known per-example value (the image's mean pixel) to check the bookkeeping."""
    from gen_jax.diffusion import protocol

    def fake_bound(apply_fn, params, schedule, x0, rng, **kw):
        nll = x0.reshape(x0.shape[0], -1).astype(np.float32).mean(-1)
        T, D = schedule.num_timesteps, np.prod(x0.shape[1:])
        zero = 0.0 * nll
        return {"nll_nats": nll, "bits_per_dim": nll / (D * np.log(2)), "prior_nats": zero, "decoder_nats": nll,
                "diffusion_nats": zero, "terms_nats": np.zeros((1, T), np.float32) + zero[:, None]}

    monkeypatch.setattr(protocol, "variational_bound", fake_bound)
    config = ddpm_mnist.get_config("smoke")
    config.eval.bound_examples, config.eval.bound_batch_size = 5, 2  # 3 bound batches, one padded
    x = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
    _, _, ctx = _context(config, MNIST, [{"x": x[:4]}, {"x": x[4:]}])
    ev = evaluators.build(["bound"], config.eval, ctx)[0](ctx.params[0], jax.random.key(1))
    per = x[:5].reshape(5, -1).mean(-1) / (784 * np.log(2))
    assert ev["bound_examples"] == 5
    np.testing.assert_allclose(ev["bits_per_dim"], per.mean(), rtol=1e-5)
    np.testing.assert_allclose(ev["bits_per_dim_se"], per.std(ddof=1) / np.sqrt(5), rtol=1e-4)


def test_image_ode_nll_takes_its_options_from_the_config(monkeypatch):
    """The image ODE likelihood's bookkeeping: ``eval.ode_examples`` held-out images in solves of
    ``eval.ode_batch_size``, the config's divergence and tolerances passed to the solver, bits/dim = nats /
    (D ln 2) with its standard error. The solve is replaced by a known per-image value (the mean pixel)."""
    from gen_jax import diffusion

    calls = []

    def fake_solve(flow, x, key, **solver):
        calls.append((x.shape[0], solver))
        return {"nll_nats": x.reshape(x.shape[0], -1).astype(jnp.float32).mean(-1), "num_steps": jnp.asarray(7)}

    monkeypatch.setattr(diffusion, "dequantized_bits_per_dim", fake_solve)
    config = ddpm_mnist.get_config("smoke")
    config.eval.ode_examples, config.eval.ode_batch_size = 5, 2
    config.eval.ode_divergence, config.eval.ode_rtol = "gaussian", 1e-3
    x = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
    _, _, ctx = _context(config, MNIST, [{"x": x[:4]}, {"x": x[4:]}])
    ev = evaluators.build(["ode_nll"], config.eval, ctx)[0](ctx.params[0], jax.random.key(1))
    assert [n for n, _ in calls] == [2, 2, 1]
    assert all(solver == dict(divergence_kind="gaussian", rtol=1e-3, atol=1e-5) for _, solver in calls), calls
    nats = x[:5].reshape(5, -1).mean(-1)
    assert ev["ode_examples"] == 5 and ev["ode_solver_steps"] == 7
    np.testing.assert_allclose(ev["ode_nll_nats"], nats.mean(), rtol=1e-5)
    np.testing.assert_allclose(ev["ode_bits_per_dim"], nats.mean() / (784 * np.log(2)), rtol=1e-5)
    np.testing.assert_allclose(ev["ode_bits_per_dim_se"], nats.std(ddof=1) / np.sqrt(5) / (784 * np.log(2)),
                               rtol=1e-4)


def test_sample_evaluators_score_every_seed_from_one_draw():
    """modes and frechet score each seed's own samples (one draw for all seeds and both evaluators): the
    summary's mean/std/min over seeds equal those of mode_coverage applied to each seed's samples."""
    from gen_jax.metrics import mode_coverage

    config = gan_grid25.get_config("smoke")
    config.num_seeds, config.eval.num_samples = 3, 400
    data = DataSpec(kind="toy", shape=(2,), name="grid25", toy=toy.grid25())
    held = [{"x": np.asarray(data.toy.sample(jax.random.key(9), 500))}]
    _, _, ctx = _context(config, data, held)
    got = evaluators.evaluate(evaluators.build(["modes", "frechet"], config.eval, ctx), ctx, jax.random.key(5))
    samples = ctx.sample(jax.random.key(5), 400)
    assert samples.shape == (3, 400, 2) and not np.allclose(samples[0], samples[1])
    hq = [mode_coverage(s, data.toy.means, data.toy.std)["hq_percent"] for s in samples]
    np.testing.assert_allclose([got["hq_percent"], got["hq_percent_std"], got["hq_percent_min"]],
                               [np.mean(hq), np.std(hq), np.min(hq)], rtol=1e-6)
    assert got["num_seeds"] == 3 and np.isfinite(got["frechet_2d"])


def test_unknown_evaluator_or_figure_names_are_refused():
    from experiments import figures

    config = realnvp_toy.get_config("smoke")
    _, _, ctx = _context(config, RING)
    with pytest.raises(ValueError, match=r"evaluators has \['likelihood'\]; expected names among"):
        evaluators.build(["likelihood"], config.eval, ctx)
    with pytest.raises(ValueError, match=r"figures has \['latent'\]; expected names among .*'latents'"):
        figures.check(["latent"])
    with pytest.raises(ValueError, match="modes evaluator scores toy mixtures"):
        evaluators.build(["modes"], config.eval, _context(vae_mnist.get_config("smoke"), MNIST)[2])


def test_build_rejects_bad_config():
    config = vae_toy.get_config("smoke")
    config.objective.likelihood = "bernoulli"
    with pytest.raises(ValueError, match="does not fit real-valued vector data"):
        build_seeds(config, RING)
    config = vae_toy.get_config("smoke")
    config.model.arch = "conv"
    with pytest.raises(ValueError, match="needs image data"):
        build_seeds(config, RING)
    config = vae_mnist.get_config("smoke")
    config.eval.rows_per_call = -1
    with pytest.raises(ValueError, match="rows_per_call"):
        evaluators.build(["importance_nll"], config.eval, _context(config, MNIST)[2])


@pytest.mark.parametrize("T, keys", [(1000, ["kl_t2_10", "kl_t11_100", "kl_t101_1000"]),
                                     (20, ["kl_t2_10", "kl_t11_20"]), (4000, None)])
def test_diffusion_bound_by_decade_of_t(T, keys):
    terms = np.random.default_rng(T).random(T)
    parts = kl_by_decade(terms)
    if keys is not None:
        assert list(parts) == keys
    else:
        assert list(parts)[-1] == "kl_t1001_4000"
    assert sum(parts.values()) == pytest.approx(terms[1:].sum(), rel=1e-12)  # t = 1 (L_0) excluded
    if T == 1000:
        assert parts["kl_t11_100"] == pytest.approx(terms[10:100].sum(), rel=1e-12)
