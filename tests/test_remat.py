"""Rematerialisation (config model.remat, gen_jax.nn.remat): the same parameters, values and gradients as
without it, with the backward pass recomputing the named blocks; the benchmark times the variants."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.benchmark.suites import SUITES, Entry, with_variants
from experiments.benchmark.configs import load_config
from gen_jax import flows
from gen_jax.diffusion import UNet
from gen_jax.nn import remat


REMAT = {"remat2", "checkpoint"}  # jax.checkpoint's primitive (its name differs across jax versions)


def _primitives(jaxpr) -> set[str]:
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (tuple, list)) else (p,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    names |= _primitives(inner)
    return names


def _perturbed(params, scale=0.05):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(5), len(leaves))
    return jax.tree.unflatten(tree, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


@pytest.mark.slow  # XLA CPU takes 20-80 s to compile the rematerialised U-Net's gradient
@pytest.mark.parametrize("policy", ["full", "dots"])
def test_unet_blocks_rematerialised_give_the_same_values_and_gradients(policy):
    kw = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, norm_groups=4)
    plain, remat_net = UNet(**kw), UNet(**kw, remat=policy)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    t = jnp.array([3, 700])
    params = plain.init(jax.random.key(1), x, t)["params"]
    assert jax.tree.structure(remat_net.init(jax.random.key(1), x, t)["params"]) == jax.tree.structure(params)
    params = _perturbed(params)

    def loss(net):
        return lambda p: jnp.mean(net.apply({"params": p}, x, t) ** 2)

    v0, g0 = jax.jit(jax.value_and_grad(loss(plain)))(params)
    v1, g1 = jax.jit(jax.value_and_grad(loss(remat_net)))(params)
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    grad_jaxpr = jax.make_jaxpr(jax.grad(loss(remat_net)))(params).jaxpr
    assert REMAT & _primitives(grad_jaxpr)
    assert not REMAT & _primitives(jax.make_jaxpr(jax.grad(loss(plain)))(params).jaxpr)


FLOWS = [pytest.param(flows.RealNVP, dict(dim=4, num_layers=2, hidden=(16, 16)), (3, 4), id="realnvp"),
         pytest.param(flows.Glow, dict(image_shape=(4, 4, 2), num_levels=1, num_steps=2, hidden=(8, 8)), (3, 4, 4, 2),
                      id="glow", marks=pytest.mark.slow)]


@pytest.mark.parametrize("cls,kw,shape", FLOWS)
def test_flow_conditioners_rematerialised_give_the_same_likelihood_and_gradients(cls, kw, shape):
    plain, remat_flow = cls(**kw), cls(**kw, remat="full")
    x = jax.random.uniform(jax.random.key(0), shape)
    params = _perturbed(plain.init(jax.random.key(1), x)["params"], 0.1)

    def nll(flow):
        return lambda p: -jnp.mean(flow.apply({"params": p}, x, method="log_prob"))

    v0, g0 = jax.value_and_grad(nll(plain))(params)
    v1, g1 = jax.value_and_grad(nll(remat_flow))(params)
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert REMAT & _primitives(jax.make_jaxpr(jax.grad(nll(remat_flow)))(params).jaxpr)


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="remat policy must be None or one of"):
        remat(UNet, "everything")


def test_the_benchmark_times_each_variant_next_to_its_base():
    suite = dataclasses.replace(SUITES["smoke"], variants=("train.precision=bfloat16", "model.remat=full"),
                                variant_sizes=("mnist",))
    base = Entry("ddpm_mnist", load_config("ddpm_mnist", "smoke"), "diffusion", "mnist")
    vae = Entry("vae_conv_mnist", load_config("vae_conv_mnist", "smoke"), "vae", "mnist")
    toy = Entry("ddpm_toy", load_config("ddpm_toy", "smoke"), "diffusion", "toy")
    entries, skipped = with_variants([base, vae, toy], suite)
    assert [e.name for e in entries] == [
        "ddpm_mnist", "ddpm_mnist[train.precision=bfloat16]", "ddpm_mnist[model.remat=full]",
        "vae_conv_mnist", "vae_conv_mnist[train.precision=bfloat16]", "ddpm_toy"]
    assert entries[1].config.train.precision == "bfloat16" and entries[2].config.model.remat == "full"
    assert [s["config"] for s in skipped] == ["vae_conv_mnist[model.remat=full]"]  # the VAE has no remat


def test_largest_batch_within_a_memory_budget_from_the_affine_memory_of_the_batch():
    from experiments.benchmark.sections import largest_batch

    fixed, per_example = 300e6, 2.5e6  # bytes: state + batch x activations
    records = [{"batch": b, "xla_total_bytes": fixed + per_example * b} for b in (32, 64, 128)]
    fit = largest_batch(records, budget_bytes=int(16e9))
    assert fit["bytes_per_example"] == pytest.approx(per_example) and fit["fixed_bytes"] == pytest.approx(fixed)
    assert fit["largest_batch"] == int((16e9 - fixed) // per_example) == 6280
    assert largest_batch(records, budget_bytes=0) == {} and largest_batch(records[:1], int(1e9)) == {}
