"""Mixed precision (gen_jax/precision.py, config train.precision): one policy through every family's model
contract. In bfloat16 the networks' matmuls and convolutions run in bfloat16 while parameters, gradients,
losses and log-dets stay float32; the loss agrees with float32's on the same parameters and batch; a flow's
log-det stays the exact log-determinant of the map it computes."""

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.run import ConfigError, build_experiment, validate_config
from experiments.tasks.base import DataSpec
from experiments.tasks.flows import build_flow
from gen_jax import flows
from gen_jax.flows import coupling
from gen_jax.data import toy
from gen_jax.data.preprocess import uniform_dequantize
from gen_jax.precision import DynamicLossScale, Policy, matmul_flops_by_dtype
from gen_jax.train import TrainState, make_train_step

RING = DataSpec(kind="toy", shape=(2,), name="ring8", toy=toy.ring8())
MNIST = DataSpec(kind="image", shape=(28, 28, 1), name="mnist", num_classes=10, num_train=64)


def test_float32_adds_nothing_and_names_are_checked():
    tree = {"w": jnp.ones(3), "i": jnp.arange(3)}
    assert Policy().cast_to_compute(tree) is tree and Policy().cast_to_float32(tree) is tree
    cast = Policy("bfloat16").cast_to_compute(tree)
    assert cast["w"].dtype == jnp.bfloat16 and cast["i"].dtype == tree["i"].dtype  # only floating leaves
    with pytest.raises(ValueError, match="precision must be one of"):
        Policy("float64")
    c = importlib.import_module("experiments.configs.ddpm_toy").get_config("smoke")
    c.train.precision = "bf16"
    with pytest.raises(ConfigError, match="train.precision"):
        validate_config(c)


def _perturbed(params, scale: float):
    """``params`` plus Gaussian noise: away from the zero-initialised output layers, so that outputs matter."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    return jax.tree.unflatten(tree, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


def _model(name: str, precision: str, data: DataSpec):
    c = importlib.import_module(f"experiments.configs.{name}").get_config("smoke")
    c.train.precision = precision
    if data.kind == "image" and c.family == "flow":  # image flows initialise from data: no train split here
        return flows.NormalizingFlow(build_flow(c, data))
    return build_experiment(c, data).model


# (config, data, the least share of the loss's matmul/conv FLOPs in bfloat16): what stays float32 by design is
# outside the networks (Glow's invertible 1x1 convolutions) or the time embedding's first layer, fed by
# float32 sinusoids (1e-4 of a U-Net's FLOPs; a third of ddpm_toy's MLP denoiser's).
# The conv networks of the other families compile for a minute each: marked slow (make test-all).
SLOW = pytest.mark.slow
FAMILIES = [pytest.param("ddpm_mnist", MNIST, 0.999, id="ddpm_mnist"),
            pytest.param("realnvp_toy", RING, 0.999, id="realnvp_toy"),
            pytest.param("vae_toy", RING, 0.999, id="vae_toy"),
            pytest.param("gan_ring8", RING, 0.999, id="gan_ring8"),
            pytest.param("glow_mnist", MNIST, 0.95, id="glow_mnist", marks=SLOW),
            pytest.param("vae_conv_mnist", MNIST, 0.999, id="vae_conv_mnist", marks=SLOW),
            pytest.param("dcgan_mnist", MNIST, 0.999, id="dcgan_mnist", marks=SLOW)]


@pytest.mark.parametrize("name,data,min_share", FAMILIES)
def test_each_family_runs_its_networks_in_bfloat16_and_keeps_its_loss(name, data, min_share):
    f32, bf16 = _model(name, "float32", data), _model(name, "bfloat16", data)
    key = jax.random.key(0)
    if data.kind == "toy":
        x = data.toy.sample(key, 64)
        init_x = x
    else:
        x = jax.random.randint(key, (8, *data.shape), 0, 256).astype(jnp.uint8)
        init_x = uniform_dequantize(key, x, 8) if name == "glow_mnist" else x
    batch = {"x": x, "label": jnp.arange(x.shape[0]) % 10}
    params, state = f32.init(jax.random.key(1), {"x": init_x})
    assert jax.tree.structure(bf16.init(jax.random.key(1), {"x": init_x})[0]) == jax.tree.structure(params)
    params = _perturbed(params, 0.02)

    def loss(model):
        fn = model.d_loss if hasattr(model, "d_loss") else model.loss
        return lambda p: fn(p, state, batch, jax.random.key(3))[0]

    l32, g32 = jax.jit(jax.value_and_grad(loss(f32)))(params)
    l16, g16 = jax.jit(jax.value_and_grad(loss(bf16)))(params)
    assert l16.dtype == jnp.float32 and all(g.dtype == jnp.float32 for g in jax.tree.leaves(g16))
    # bfloat16 keeps 8 significant bits (relative rounding 2^-9 per operation)
    assert abs(float(l16) - float(l32)) <= 2e-2 * abs(float(l32)), (float(l16), float(l32))
    a, b = (np.concatenate([np.ravel(g) for g in jax.tree.leaves(t)]) for t in (g32, g16))
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.98
    flops32 = matmul_flops_by_dtype(loss(f32), params)
    flops16 = matmul_flops_by_dtype(loss(bf16), params)
    assert set(flops32) == {"float32"}
    assert flops16["bfloat16"] / sum(flops16.values()) >= min_share, flops16
    assert sum(flops16.values()) == pytest.approx(sum(flops32.values()))


LAYERS = [pytest.param(coupling.AffineCoupling(mask="alternate", hidden=(16, 16)), (4,), id="affine"),
          pytest.param(coupling.AffineCoupling(mask="channel", hidden=(8,), num_res_blocks=1), (4, 4, 2),
                       id="glow_coupling", marks=SLOW),
          pytest.param(coupling.AffineCoupling(mask="checkerboard", hidden=(8,)), (4, 4, 2), id="checkerboard",
                       marks=SLOW),
          pytest.param(coupling.SplineCoupling(mask="alternate", hidden=(16, 16)), (4,), id="spline", marks=SLOW)]


@pytest.mark.parametrize("layer,shape", LAYERS)
def test_flow_log_det_is_the_exact_log_determinant_of_its_bfloat16_map(layer, shape):
    """The conditioners run in bfloat16, but each coupling's transform and log-det are float32 functions of the
    conditioners' outputs: the Jacobian of the map actually computed is (permuted) triangular with a float32
    diagonal, so its log|det| by autodiff equals the reported log-det to float32 round-off, and the inverse
    undoes the forward map. (A whole flow's log-det is the sum of its layers'; autodiff through several
    layers would differentiate the bfloat16 conditioners themselves, whose tangents are rounded.)"""
    layer = layer.clone(precision=Policy("bfloat16"))
    x = jax.random.normal(jax.random.key(0), (3, *shape))
    params = _perturbed(layer.init(jax.random.key(1), x, method="forward"), 0.3)
    z, log_det = layer.apply(params, x, method="forward")
    assert log_det.dtype == jnp.float32 and float(jnp.max(jnp.abs(log_det))) > 0.05
    d = int(np.prod(shape))
    forward = jax.jit(lambda v: layer.apply(params, v.reshape(1, *shape), method="forward"))
    log_abs_det_jacobian = jax.jit(lambda v: jnp.linalg.slogdet(jax.jacfwd(lambda u: forward(u)[0].reshape(d))(v))[1])
    for i in range(x.shape[0]):
        np.testing.assert_allclose(forward(x[i])[1][0], log_abs_det_jacobian(x[i].reshape(d)), atol=1e-5, rtol=1e-5)
    x_back, _ = layer.apply(params, z, method="inverse")
    np.testing.assert_allclose(x_back, x, atol=1e-5)
    # and the conditioner did run in bfloat16
    flops = matmul_flops_by_dtype(lambda p: layer.apply(p, x, method="forward")[1], params)
    assert set(flops) == {"bfloat16"}


def test_a_bfloat16_toy_run_trains_as_well_as_float32():
    """ddpm_toy (width 64), 500 steps from the same seed and batches in each precision: the held-out denoising
    loss (fixed noise and times) ends equal within the spread between seeds (0.252-0.258 over three seeds of
    float32; bfloat16 differed from float32 by at most 0.0002 on each; float16, with its loss scale, by 0.0001)."""
    test_x = toy.ring8().sample(jax.random.key(99), 4096)
    batches = np.asarray(toy.ring8().sample(jax.random.key(100), 500 * 256)).reshape(500, 256, 2)
    final = {}
    for precision in ("float32", "bfloat16", "float16"):
        c = importlib.import_module("experiments.configs.ddpm_toy").get_config()
        c.train.precision = precision
        c.model.hidden = 64
        exp = build_experiment(c, RING)
        state = exp.init_state(jax.random.key(0))
        step = make_train_step(exp.model.loss)
        held_out = jax.jit(lambda p: exp.model.loss(p, state.model_state, {"x": test_x}, jax.random.key(7))[0])
        start = float(held_out(state.params))
        train = jax.jit(lambda s, xs: jax.lax.scan(lambda s, x: (step(s, {"x": x})[0], None), s, xs)[0])
        state = train(state, batches)
        final[precision] = float(held_out(state.params))
        assert final[precision] < 0.3 * start
        # float16 trains with a loss scale; its calibration skips are not counted as divergence
        assert (state.loss_scale is not None) == (precision == "float16") and int(state.nonfinite_total) == 0
    assert abs(final["bfloat16"] - final["float32"]) < 0.003, final
    assert abs(final["float16"] - final["float32"]) < 0.003, final


# ---- float16: dynamic loss scaling (gen_jax.precision.DynamicLossScale, in TrainState.loss_scale) ----

def test_the_loss_scale_halves_after_an_overflow_and_doubles_after_its_period():
    ls = DynamicLossScale.create(initial=8.0, period=3, min_scale=2.0, max_scale=16.0)
    scales = []
    for finite in [True, True, True, True, True, True, False, False, False, False, True]:
        ls = ls.adjust(jnp.asarray(finite))
        scales.append(float(ls.scale))
    # doubles after 3 finite updates (capped at max_scale), halves after each overflow (floored at min_scale)
    assert scales == [8, 8, 16, 16, 16, 16, 8, 4, 2, 2, 2]
    # overflows: skips while the scale was above its floor (the last skip, at the floor, is a real one)
    assert int(ls.overflows) == 3 and int(ls.good_steps) == 1
    assert Policy("float16").loss_scale().scale == 2.0**15
    assert Policy("bfloat16").loss_scale() is None and Policy().loss_scale() is None
    for bad in [dict(initial=3.0), dict(initial=1.0, min_scale=2.0), dict(initial=2.0**25), dict(period=0)]:
        with pytest.raises(ValueError):
            DynamicLossScale.create(**bad)


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(16)(jnp.tanh(nn.Dense(64)(x)))


def _mlp_training(loss_factor, precision, loss_scale, params):
    """The state (SGD, learning rate 1: ``-grad = new - old`` params) and the engine's step for
    ``loss_factor x mean((mlp(x) - 1)^2)``, the MLP in ``precision``."""
    policy = Policy(precision)

    def loss_fn(p, model_state, batch, rng):
        out = policy.apply(_MLP(), {"params": p}, batch["x"])
        return loss_factor * jnp.mean(jnp.square(out - 1.0)), ({}, model_state)

    state = TrainState.create(params=params, tx=optax.sgd(1.0), key=jax.random.key(0), loss_scale=loss_scale)
    return state, make_train_step(loss_fn, donate=False)


def test_the_loss_scale_keeps_float16_gradients_that_underflow_without_it():
    """A small loss (1e-5 x a mean square): its float16 gradients fall below float16's least subnormal (6e-8)
    and vanish without scaling, while with the default scale (2^15) the engine's gradients equal float32's to
    float16 precision."""
    x = jax.random.normal(jax.random.key(1), (256, 8))
    params = _MLP().init(jax.random.key(0), x)["params"]

    def grads(precision, loss_scale):
        old, step = _mlp_training(1e-5, precision, loss_scale, params)
        new, metrics = step(old, {"x": x})
        return np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(old.params),
                                                               jax.tree.leaves(new.params))]), metrics

    g32, _ = grads("float32", None)
    plain, _ = grads("float16", None)
    scaled, metrics = grads("float16", DynamicLossScale.create())
    error = lambda g: np.linalg.norm(g - g32) / np.linalg.norm(g32)  # noqa: E731
    assert error(plain) > 0.5 and error(scaled) < 1e-2, (error(plain), error(scaled))  # measured: 1.0, 0.004
    assert float(metrics["loss_scale"]) == 2.0**15 and int(metrics["skipped"]) == 0


def test_float16_overflows_are_skipped_halving_the_scale_and_not_counted_as_divergence():
    """A loss whose gradients overflow float16 at the starting scale (2^24): those updates are skipped (the
    parameters unchanged), the scale halves after each until the gradients fit, then training goes on; the
    skips are the scale's (``overflows``), not divergence (``nonfinite_total`` stays 0). A NaN loss at the
    floor of the scale is counted."""
    x = jax.random.normal(jax.random.key(1), (256, 8))
    params = _MLP().init(jax.random.key(0), x)["params"]
    state, step = _mlp_training(1.0, "float16", DynamicLossScale.create(initial=2.0**24), params)
    skipped = []
    for _ in range(20):
        new, metrics = step(state, {"x": x})
        skipped.append(int(metrics["skipped"]))
        if skipped[-1]:
            assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)))
        state = new
    k = skipped.index(0)
    assert k >= 1 and skipped == [1] * k + [0] * (20 - k), skipped
    assert float(state.loss_scale.scale) == 2.0 ** (24 - k) and int(state.loss_scale.overflows) == k
    assert int(state.nonfinite_total) == 0 and int(state.opt_state.total_notfinite) == k
    floor = state.replace(loss_scale=state.loss_scale.replace(scale=jnp.asarray(1.0)))  # its min_scale
    diverged, _ = step(floor, {"x": x * jnp.nan})
    assert int(diverged.nonfinite_total) == 1
