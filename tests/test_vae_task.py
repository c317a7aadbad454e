"""The VAE experiment task (experiments/tasks/vae.py): its density and evaluation are what they claim."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import vae_mnist, vae_toy
from experiments.tasks import vae as vae_task
from experiments.tasks.base import DataSpec
from gen_jax.data import toy


def test_toy_log_density_integrates_to_one():
    """exp of the importance-sampled log p(x) is an unbiased estimate of p(x), so its integral over
    the plane (Riemann sum, 200 x 200 grid on [-8, 8]^2) is 1 up to Monte Carlo and grid error."""
    config = vae_toy.get_config("smoke")
    data = DataSpec(kind="toy", shape=(2,), name="ring8", toy=toy.ring8())
    task = vae_task.build(config, data)
    state = task.init(jax.random.key(0))
    xs = np.linspace(-8, 8, 200, dtype=np.float32)
    grid = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2)
    log_p = np.asarray(task.log_density(state, jnp.asarray(grid)), np.float64)
    assert log_p.shape == (200 * 200,) and np.all(np.isfinite(log_p))
    mass = np.exp(log_p).sum() * (xs[1] - xs[0]) ** 2
    assert abs(mass - 1.0) < 0.05, mass


def test_image_evaluate_reports_consistent_nats():
    """Evaluation is deterministic for a key, binarises the test set the same way every time, and
    reports bits/dim = nll / (D ln 2); the K-sample IS estimate is below the single-sample -ELBO."""
    config = vae_mnist.get_config("smoke")
    data = DataSpec(kind="image", shape=(28, 28, 1), name="mnist", num_classes=10, num_train=64)
    task = vae_task.build(config, data)
    state = task.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    batches = [{"x": rng.integers(0, 256, (32, 28, 28, 1), dtype=np.uint8)} for _ in range(2)]
    a = task.evaluate(state, jax.random.key(1), batches)
    b = task.evaluate(state, jax.random.key(1), batches)
    assert a == b
    assert a["num_examples"] == 64 and a["iwae_k"] == config.eval.iwae_k
    np.testing.assert_allclose(a["bits_per_dim"], a["nll_nats"] / (784 * np.log(2)), rtol=1e-6)
    np.testing.assert_allclose(-a["elbo_nats"], a["recon_nats"] + a["kl"], rtol=1e-5)
    assert a["nll_nats"] < -a["elbo_nats"]
    samples = task.sample(state, jax.random.key(2), 5)
    assert samples.shape == (5, 28, 28, 1) and float(samples.min()) >= 0 and float(samples.max()) <= 1


def test_image_evaluate_standard_error_over_examples():
    """nll_nats_se is the standard error of the mean over test examples (sample std with ddof=1 over
    sqrt(n)): for two examples it is |nll_0 - nll_1| / 2. The first batch is evaluated alone with the
    same key and batch index, which gives nll_0; nll_1 follows from the mean."""
    config = vae_mnist.get_config("smoke")
    data = DataSpec(kind="image", shape=(28, 28, 1), name="mnist", num_classes=10, num_train=64)
    task = vae_task.build(config, data)
    state = task.init(jax.random.key(0))
    rng = np.random.default_rng(1)
    b0, b1 = ({"x": rng.integers(0, 256, (1, 28, 28, 1), dtype=np.uint8)} for _ in range(2))
    both = task.evaluate(state, jax.random.key(3), [b0, b1])
    nll0 = task.evaluate(state, jax.random.key(3), [b0])["nll_nats"]
    nll1 = 2 * both["nll_nats"] - nll0
    assert abs(nll0 - nll1) > 1.0  # two different images
    np.testing.assert_allclose(both["nll_nats_se"], abs(nll0 - nll1) / 2, rtol=1e-3)


@pytest.mark.parametrize("rows_per_call,num_seeds", [(0, 1), (12, 1), (12, 2)])
def test_image_evaluate_in_short_calls_equals_the_whole_batch_estimate(rows_per_call, num_seeds):
    """evaluate runs the K importance samples as one call per chunk (and per row block): the NLL must
    equal the one-call library estimate, vae.vae_log_likelihood on the same binarised batch with the
    same key (the same draws, up to float summation order), for every seed."""
    from gen_jax import vae

    config = vae_mnist.get_config("smoke")
    config.eval.rows_per_call = rows_per_call  # 32 images: blocks of 12, 12, 8
    config.num_seeds = num_seeds
    data = DataSpec(kind="image", shape=(28, 28, 1), name="mnist", num_classes=10, num_train=64)
    task = vae_task.build(config, data)
    state = task.init(jax.random.key(0))
    x_raw = np.random.default_rng(2).integers(0, 256, (32, 28, 28, 1), dtype=np.uint8)
    got = task.evaluate(state, jax.random.key(4), [{"x": x_raw}])
    x = vae.preprocess(jnp.asarray(x_raw), jax.random.fold_in(jax.random.key(config.eval.binarize_seed), 0),
                       vae.get_likelihood(config.objective.likelihood), config.objective.binarize)
    is_key = jax.random.split(jax.random.fold_in(jax.random.key(4), 0))[0]
    params = state.eval_params if num_seeds == 1 else [jax.tree.map(lambda p: p[s], state.eval_params)
                                                        for s in range(num_seeds)]
    model = vae_task.build_model(config, data, vae.get_likelihood(config.objective.likelihood))
    nlls = [-float(jnp.mean(vae.vae_log_likelihood(model, p, x, is_key, likelihood=config.objective.likelihood,
                                                    num_samples=config.eval.iwae_k,
                                                    chunk_size=config.eval.chunk_size)))
            for p in (params if num_seeds > 1 else [params])]
    assert config.eval.iwae_k > config.eval.chunk_size  # several chunks
    np.testing.assert_allclose(got["nll_nats"], np.mean(nlls), rtol=1e-5)


def test_build_rejects_bad_config():
    data = DataSpec(kind="toy", shape=(2,), name="ring8", toy=toy.ring8())
    config = vae_toy.get_config("smoke")
    config.objective.likelihood = "bernoulli"
    with pytest.raises(ValueError, match="does not fit real-valued toy data"):
        vae_task.build(config, data)
    config = vae_toy.get_config("smoke")
    config.model.arch = "conv"
    with pytest.raises(ValueError, match="needs image data"):
        vae_task.build(config, data)
    config = vae_toy.get_config("smoke")
    config.eval.rows_per_call = -1
    with pytest.raises(ValueError, match="rows_per_call"):
        vae_task.build(config, data)
