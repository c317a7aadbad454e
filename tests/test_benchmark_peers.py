"""The benchmark's PyTorch peers (experiments/benchmark/peers): every twin has exactly the parameter count of
its gen_jax config, per player, and trains (its loss falls on the fixed batch); without torch the section is
a note, not a failure; the report renders the comparison. No timing assertions. The twin tests need torch
(not in the default install) and are skipped without it."""

import math

import jax
import numpy as np
import pytest

from experiments.benchmark import driver, peers, tasks
from experiments.benchmark.per_config import param_counts
from experiments.benchmark.report import render_markdown
from experiments.benchmark.suites import SUITES, discover, entry_of, evaluate_targets

# the standard suite's configs: one per family and size class (experiments.benchmark.suites.discover)
STANDARD = ("realnvp_toy", "ddpm_toy", "vae_toy", "gan_ring8", "glow_mnist", "ddpm_mnist", "vae_conv_mnist",
            "dcgan_mnist")


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
    env = {"suite": "standard", "command": "c", "date_utc": "d", "jax": "j", "jaxlib": "j", "flax": "f",
           "optax": "o", "python": "p", "backend": "cpu", "device_kind": "cpu", "device_count": 1, "cpu_model": "x",
           "cpus_usable": 2, "load_avg_1min": 0.1, "XLA_FLAGS": "", "git_commit": "abc", "git_dirty": False}
    targets = evaluate_targets([rec], "cpu")
    md = render_markdown({"env": env, "peak_gflops_per_s": 1.0, "records": [rec], "targets": targets})
    row = next(line for line in md.splitlines() if line.startswith("| ddpm_mnist | 128 |"))
    assert "0.687M" in row and "500 ± 10" in row and "400 ± 20" in row and "0.80x" in row
    assert "n/a: NotImplementedError: x" in row
    assert targets[0]["met"] is False and math.isclose(rec["ratio_eager"], 0.8)
