"""The benchmark's PyTorch peers (experiments/benchmark/peers): every twin has exactly the parameter count of
its gen_jax config, per player, and trains (its loss falls on the fixed batch); without torch the section is
a note, not a failure; the report renders the comparison. No timing assertions. The twin tests need torch
(not in the default install) and are skipped without it."""

import math

import jax
import numpy as np
import pytest

from experiments.benchmark import driver, peers, tasks
from experiments.benchmark.peers import layers
from experiments.benchmark.per_config import param_counts
from experiments.benchmark.report import render_markdown
from experiments.benchmark.suites import SUITES, discover, entry_of, evaluate_targets

# the standard suite's configs: one per family and size class (experiments.benchmark.suites.discover)
STANDARD = ("realnvp_toy", "ddpm_toy", "vae_toy", "gan_ring8", "glow_mnist", "ddpm_mnist", "vae_conv_mnist",
            "dcgan_mnist")


ENV = {"suite": "standard", "command": "c", "date_utc": "d", "jax": "j", "jaxlib": "j", "flax": "f", "optax": "o",
       "python": "p", "backend": "cpu", "device_kind": "cpu", "device_count": 1, "cpu_model": "x", "cpus_usable": 2,
       "load_avg_1min": 0.1, "XLA_FLAGS": "", "git_commit": "abc", "git_dirty": False}  # a report's environment


def test_every_standard_config_has_a_twin():
    assert set(STANDARD) <= set(peers.TWINS)
    entries, _ = discover(("flow", "diffusion", "vae", "gan"), None)
    assert {e.name for e in entries if e.size in SUITES["standard"].measure_sizes} == set(STANDARD)


@pytest.mark.parametrize("name", STANDARD)
def test_twin_has_the_parameter_count_of_its_config(name):
    pytest.importorskip("torch")
    entry = entry_of(name, None)
    batch_size = 8 if entry.size != "toy" else 16
    task, data = tasks.load(entry.config, batch_size)
    want = param_counts(tasks.abstract_state(task, jax.random.key(0)))
    twin = peers.build(name, entry.config, tasks.example_batch(data, batch_size))
    assert twin.param_counts() == want


@pytest.mark.parametrize("name", ("vae_toy", "ddpm_toy", "realnvp_toy", "gan_ring8"))
def test_toy_twin_trains_on_its_batch(name):
    """The twin's step is a real training step: finite losses, and (one player) the loss falls on the fixed batch."""
    pytest.importorskip("torch")
    entry = entry_of(name, None)
    task, data = tasks.load(entry.config, 256)
    twin = peers.build(name, entry.config, tasks.example_batch(data, 256))
    losses = np.array([float(twin.step()) for _ in range(60)])
    assert np.all(np.isfinite(losses))
    if entry.family != "gan":  # a game's summed losses need not fall
        assert losses[-10:].mean() < losses[:3].mean() - 0.05 * abs(losses[:3].mean()), losses


def test_without_torch_the_section_is_a_note(monkeypatch):
    monkeypatch.setattr(peers, "torch_missing", lambda: "torch is not installed (test)")
    records = []
    driver._torch_peers(records, [entry_of("vae_toy", "smoke")], SUITES["smoke"], lambda m: None)
    assert records == [{"kind": "skipped", "family": "-", "config": "-", "what": "peers",
                        "reason": "torch is not installed (test)"}]


def test_configs_without_a_twin_or_with_overrides_are_noted(monkeypatch):
    monkeypatch.setattr(peers, "torch_missing", lambda: None)
    entries = [entry_of("maf_toy", "smoke"), entry_of("vae_toy[objective.beta=2.0]", "smoke")]
    records = []
    driver._torch_peers(records, entries, SUITES["smoke"], lambda m: None)
    assert [(r["kind"], r["config"]) for r in records] == [("skipped", "maf_toy"),
                                                            ("skipped", "vae_toy[objective.beta=2.0]")]
    assert "no PyTorch twin" in records[0]["reason"] and "overridden" in records[1]["reason"]


def test_unknown_config_has_no_twin():
    pytest.importorskip("torch")
    with pytest.raises(KeyError, match="no PyTorch twin"):
        peers.build("maf_toy", entry_of("maf_toy", None).config, {})


def test_report_renders_the_comparison():
    rec = {"kind": "peer", "family": "diffusion", "config": "ddpm_mnist", "size": "mnist", "batch": 128,
           "peer": "torch 2.x", "torch_threads": 2, "params": {"params": 686769}, "twin_params": {"params": 686769},
           "params_equal": True, "jax_median_s": 0.5, "jax_iqr_s": 0.01, "torch_eager_median_s": 0.4,
           "torch_eager_iqr_s": 0.02, "ratio_eager": 0.8, "torch_compile_error": "NotImplementedError: x",
           "torch_compile_first_s": None}
    targets = evaluate_targets([rec], "cpu")
    md = render_markdown({"env": ENV, "peak_gflops_per_s": 1.0, "records": [rec], "targets": targets})
    row = next(line for line in md.splitlines() if line.startswith("| ddpm_mnist | 128 |"))
    assert "0.687M" in row and "500 ± 10" in row and "400 ± 20" in row and "0.80x" in row
    assert "n/a: NotImplementedError: x" in row
    assert targets[0]["met"] is False and math.isclose(rec["ratio_eager"], 0.8)


# ------------------------------------------------------------------ the peer layers section


def _kernel_sizes(params) -> list[int]:
    return [int(np.prod(leaf.shape)) for path, leaf in jax.tree_util.tree_leaves_with_path(params)
            if getattr(path[-1], "key", None) == "kernel"]


def test_record_layers_finds_every_layer_of_the_step():
    """Every convolution, dense layer and GroupNorm of ddpm_mnist's train step is recorded once per call, with its
    shapes: the U-Net calls each module once, so the calls equal its kernels (and norms) and their sizes add up."""
    entry = entry_of("ddpm_mnist", "smoke")
    task, data = tasks.load(entry.config, 8)
    state = tasks.abstract_state(task, jax.random.key(0))
    recs = layers.record_layers(tasks.train_step(task), state, tasks.example_batch(data, 8))
    kernels = _kernel_sizes(state.params)

    def kernel_size(r):
        m, c_in = r["module"], r["shape"][-1]
        return c_in * r["features"] * (int(np.prod(m.kernel_size)) // m.feature_group_count if r["kind"] == "conv"
                                       else 1)

    weights = [r for r in recs if r["kind"] != "norm"]
    assert sum(r["count"] for r in weights) == len(kernels)
    assert sum(r["count"] * kernel_size(r) for r in weights) == sum(kernels)
    scales = [path for path, _ in jax.tree_util.tree_leaves_with_path(state.params)
              if getattr(path[-1], "key", None) == "scale"]
    assert sum(r["count"] for r in recs if r["kind"] == "norm") == len(scales)  # the U-Net's GroupNorms
    assert {r["kind"] for r in recs} == {"conv", "dense", "norm"} and all(r["shape"][0] == 8 for r in recs
                                                                           if r["kind"] != "dense")
    assert "+ silu" in " ".join(r["name"] for r in recs if r["kind"] == "norm")
    prefix = {"conv": "conv ", "dense": "dense ", "norm": "group norm "}
    assert all(r["name"] == layers.describe(r) and r["name"].startswith(prefix[r["kind"]]) for r in recs)


def test_torch_layers_mirror_the_flax_modules():
    """PyTorch's mirror of each recorded layer gives the flax module's output with the same weights (stride 1,
    where both pad symmetrically) or its output shape (stride 2, where flax may pad more at the end); the timing
    records every mode of both frameworks."""
    torch = pytest.importorskip("torch")
    import flax.linen as fnn

    from gen_jax.nn import Conv, GroupNorm

    class Net(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            x = Conv(6, (3, 3), padding="SAME")(x)
            x = GroupNorm(num_groups=2, activation=fnn.swish)(x)
            x = fnn.Conv(4, (4, 4), strides=(2, 2), padding="SAME")(x)
            return fnn.Dense(5)(fnn.GroupNorm(num_groups=2, epsilon=1e-5)(x))

    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    recs = layers.record_layers(lambda p, x: Net().apply(p, x), Net().init(jax.random.key(1), x), x)
    assert [r["name"] for r in recs] == ["conv 3x3 3->6 @2x8x8", "group norm 2 + silu @2x8x8x6",
                                         "conv 4x4 s2 6->4 @2x8x8", "group norm 2 @2x4x4x4", "dense 4->5 [2, 4, 4]"]
    for r in recs:
        m = r["module"]
        xr = jax.random.normal(jax.random.key(2), r["shape"])
        p = m.init(jax.random.key(3), xr)
        want = np.asarray(m.apply(p, xr))
        layer, _ = layers.torch_layer(r)
        with torch.no_grad():
            if r["kind"] == "norm":  # flax's initial scale 1 and bias 0, as PyTorch's
                assert np.all(np.asarray(p["params"]["scale"]) == 1) and np.all(np.asarray(p["params"]["bias"]) == 0)
            else:
                k = np.asarray(p["params"]["kernel"])
                layer.weight.copy_(torch.from_numpy(k.T.copy() if r["kind"] == "dense"
                                                    else k.transpose(3, 2, 0, 1).copy()))
                layer.bias.copy_(torch.from_numpy(np.array(p["params"]["bias"])))
            xt = torch.from_numpy(np.array(xr))
            got = (layer(xt) if r["kind"] == "dense" else layer(xt.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)).numpy()
        assert got.shape == want.shape, r["name"]
        if r["kind"] != "conv" or layers._pair(m.strides) == (1, 1):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    rows = layers.measure_layers(recs, rounds=1, steps=1, warmup=1)
    for row in rows:
        assert all(row[f"{f}_{mode}_ms"] > 0 for f in ("jax", "torch") for mode in ("fwd", "fwdbwd")), row


def test_report_renders_the_layers():
    layer = {"kind": "conv", "shape": (128, 28, 28, 16), "dtype": "float32", "features": 16, "count": 4,
             "name": "conv 3x3 16->16 @128x28x28", "jax_fwd_ms": 5.0, "jax_fwdbwd_ms": 15.0, "torch_fwd_ms": 6.0,
             "torch_fwdbwd_ms": 18.0}
    sums = {"calls": 4, "distinct": 1, "mirrored_calls": 4, "jax_fwd_ms": 20.0, "jax_fwdbwd_ms": 60.0,
            "torch_fwd_ms": 24.0, "torch_fwdbwd_ms": 72.0, "ratio_fwdbwd": 1.2}
    rec = {"kind": "peer_layers", "family": "diffusion", "config": "ddpm_mnist", "batch": 128, "peer": "torch 2.x",
           "torch_threads": 2, "layers": [layer], "sums": {"conv": sums, "all": sums}}
    lines = render_markdown({"env": ENV, "peak_gflops_per_s": 1.0,
                             "records": [rec], "targets": []}).splitlines()
    assert "| ddpm_mnist | 128 | convolutions | 4 (1) | 20 | 24 | 60 | 72 | 1.20x |  |  |" in lines
    assert "| ddpm_mnist | 128 | all | 4 (1) | 20 | 24 | 60 | 72 | 1.20x | - | - |" in lines
    assert "| conv 3x3 16->16 @128x28x28 | 4 | 5 | 6 | 15 | 18 |" in lines
