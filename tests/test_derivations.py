"""The derivations report: the fast run of every family passes and writes its files, each check can
fail on a deliberately wrong input, and the CLI's exit status follows the records.

The tests call the same check functions as the report (``experiments.derivations.<family>``).
"""

import json
import math
import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.derivations import (common, diffusion, diffusion_continuous, flow, flow_matching, gan, ode_likelihood,
                                     report, vae)
from experiments.derivations.__main__ import main
from gen_jax import diffusion as gen_diffusion
from gen_jax import flows

JSON_FIELDS = {"family", "name", "lhs", "rhs", "abs_error", "tolerance", "passed"}


# ------------------------------------------------------------------------------ the fast report
@pytest.mark.parametrize("family", list(report.FAMILIES))
def test_fast_report_passes(family, tmp_path):
    records, md_path, json_path = report.run([family], str(tmp_path), fast=True, log=None)
    failed = [(r.name, r.lhs, r.rhs, r.abs_error, r.tolerance, r.note) for r in records if not r.passed]
    assert not failed, failed
    assert len(records) >= 8
    assert os.path.isfile(md_path) and os.path.isfile(json_path)
    payload = json.loads(open(json_path).read())
    assert payload["passed"] is True and payload["fast"] is True
    assert len(payload["records"]) == len(records)
    names = set()
    for rec in payload["records"]:
        assert JSON_FIELDS <= set(rec), rec
        assert rec["family"] == family and rec["passed"] is True
        assert rec["abs_error"] <= rec["tolerance"]
        names.add(rec["name"])
    assert len(names) == len(records), "record names must be unique within a family"
    md = open(md_path).read()
    for r in records:
        assert f"### {family}: {r.name}" in md
        if r.figure:
            assert os.path.isfile(tmp_path / r.figure), r.figure
    assert any(r.figure for r in records), "every family draws at least one figure"
    assert "FAIL" not in md


@pytest.mark.slow
def test_full_report_passes(tmp_path):
    """The full report (every model, large samples; a few minutes)."""
    records, _, json_path = report.run(None, str(tmp_path), fast=False, log=None)
    assert [r.name for r in records if not r.passed] == []
    assert json.loads(open(json_path).read())["passed"] is True


# ----------------------------------------------------------------------------- record semantics
def test_compare_relations():
    ok = common.compare("f", "n", "t", "x", [1.0, 2.0], [1.0, 2.0 + 1e-9], 1e-8)
    assert ok.passed and ok.abs_error == pytest.approx(1e-9, rel=1e-3)
    bad = common.compare("f", "n", "t", "x", [1.0, 2.0], [1.0, 2.1], 1e-8)
    assert not bad.passed and bad.lhs == 2.0 and bad.rhs == 2.1  # the worst element is shown
    assert common.compare("f", "n", "t", "x", 3.0, 2.0, 0.0, relation=">=").passed
    viol = common.compare("f", "n", "t", "x", 1.0, 2.0, 0.5, relation=">=")
    assert not viol.passed and viol.abs_error == 1.0
    assert common.compare("f", "n", "t", "x", 1.0, 2.0, 0.0, relation="<=").passed
    assert not common.compare("f", "n", "t", "x", math.nan, 1.0, 1.0).passed
    with pytest.raises(ValueError, match="relation"):
        common.compare("f", "n", "t", "x", 1.0, 1.0, 1.0, relation="~")


# ------------------------------------------------------------------ each check can fail: GAN
def _wrong_logits(x):
    return gan.optimal_logits(x) + 0.1 * jnp.sin(x)  # D != p_data / (p_data + p_g)


def test_gan_checks_fail_for_a_perturbed_discriminator():
    with jax.enable_x64(True):
        assert not gan.check_value_at_optimum(_wrong_logits).passed
        assert not gan.check_stationarity(_wrong_logits).passed
        assert not gan.check_maximiser(_wrong_logits).passed


# ------------------------------------------------------------------ each check can fail: VAE
def _kl_without_log_var(mean, log_var):
    return 0.5 * jnp.sum(jnp.exp(log_var) + jnp.square(mean) - 1.0, axis=-1)  # drops -log sigma^2


def test_vae_kl_checks_fail_for_a_wrong_kl():
    with jax.enable_x64(True):
        assert vae.check_kl_quadrature().passed
        assert not vae.check_kl_quadrature(kl_fn=_kl_without_log_var).passed
        assert not vae.check_kl_monte_carlo(3, 20_000, kl_fn=_kl_without_log_var).passed


# ----------------------------------------------------------------- each check can fail: flows
class WrongLogDet(flows.Bijector):
    """An affine coupling whose reported log-det is off by 1e-3 per example."""

    @nn.compact
    def forward(self, x):
        z, log_det = flows.AffineCoupling(mask="alternate", hidden=(8,))(x)
        return z, log_det + 1e-3

    def inverse(self, z):  # pragma: no cover - not used
        raise NotImplementedError


def test_flow_log_det_check_fails_for_a_wrong_log_det():
    x = np.random.default_rng(0).standard_normal((3, 4))
    with jax.enable_x64(True):
        right = flows.AffineCoupling(mask="alternate", hidden=(8,))
        variables = flow.random_variables(right, x, 0.3, seed=1)
        assert flow.check_layer_log_det("right", flow.jacobian_report_of(right, variables, jnp.asarray(x))).passed
        wrong = WrongLogDet()
        variables = flow.random_variables(wrong, x, 0.3, seed=1)
        assert not flow.check_layer_log_det("wrong", flow.jacobian_report_of(wrong, variables, jnp.asarray(x))).passed


def test_flow_density_check_fails_for_a_misnormalised_density():
    nodes, w = common.gauss_legendre(-flow.BOX, flow.BOX, flow.PANELS, flow.ORDER)
    std_normal = np.exp(-0.5 * (nodes[:, None] ** 2 + nodes[None, :] ** 2)) / (2 * np.pi)
    assert flow.check_density_normalised("normal", density=std_normal).passed
    # A log-det off by 1e-3 scales the density by e^{1e-3}.
    assert not flow.check_density_normalised("normal", density=std_normal * math.exp(1e-3)).passed


# ------------------------------------------------------------- each check can fail: diffusion
def _forward_step_wrong_noise(schedule, x_prev, t, eps):
    beta = schedule.at(schedule.betas, t)
    return jnp.sqrt(1.0 - beta) * x_prev + beta * eps  # beta_t instead of sqrt(beta_t)


def _posterior_wrong_variance(schedule, x0, xt, t):
    mean, var, log_var = gen_diffusion.q_posterior(schedule, x0, xt, t)
    return mean, schedule.at(schedule.betas, t).reshape(var.shape), log_var  # beta_t, not beta_tilde_t


def test_diffusion_checks_fail_for_wrong_formulas():
    with jax.enable_x64(True):
        assert not diffusion.check_composition_exact(forward_fn=_forward_step_wrong_noise).passed
        mean, var = diffusion.check_posterior(posterior_fn=_posterior_wrong_variance)
        assert mean.passed and not var.passed


def _weight_without_half(schedule, variables, t, num_timesteps=0):
    lam, w = gen_diffusion.diffusion_loss_weight(schedule, variables, t, num_timesteps)
    return lam, 2.0 * w  # T expm1(...) instead of T/2 expm1(...)


def _weight_at_the_wrong_end(schedule, variables, t, num_timesteps=0):
    lam, w = gen_diffusion.diffusion_loss_weight(schedule, variables, t, num_timesteps)
    return lam, w * jnp.exp(0.01 * (lam - lam.mean()))  # a slightly different integrand


def test_continuous_diffusion_checks_fail_for_wrong_weights():
    with jax.enable_x64(True):
        assert not diffusion_continuous.check_ddpm_kl_is_vdm_step(weight_fn=_weight_without_half).passed
        limit, _ = diffusion_continuous.check_discrete_bound_tends_to_continuous(weight_fn=_weight_at_the_wrong_end)
        assert not limit.passed


def test_flow_matching_gradient_check_fails_for_a_wrong_target():
    with jax.enable_x64(True):
        def target_is_the_point(x, eps, t):  # u = z_t instead of alpha' x + sigma' eps
            z = (1 - t)[:, None] * x + t[:, None] * eps
            return z, z

        assert flow_matching.check_conditional_gradient_is_marginal(2000, "linear").passed
        assert not flow_matching.check_conditional_gradient_is_marginal(2000, "linear",
                                                                       target_fn=target_is_the_point).passed


def _reverse_sde_drift_as_an_ode(model, params):
    """f - g^2 score (the reverse SDE's drift) where the probability flow has f - g^2 score / 2."""
    v, t0, t1 = model.probability_flow(params)
    _, lam0, lam1 = model.data_predictor(params)

    def drift(z, t):
        lam = lam0 + (lam1 - lam0) * t
        (a, _), (da, _) = jax.jvp(gen_diffusion.alpha_sigma, (lam,), (jnp.asarray(lam1 - lam0, lam.dtype),))
        return 2.0 * v(z, t) - da / a * z

    return drift, t0, t1


def test_ode_likelihood_check_fails_for_the_reverse_sde_drift():
    assert not ode_likelihood.check_ddpm_probability_flow_likelihood_is_exact(16, _reverse_sde_drift_as_an_ode).passed


# --------------------------------------------------------------------------------------- CLI
def _fake_family(passed: bool):
    def check():
        return common.compare("fake", "identity", "1 = 1", "1 = 1", 1.0, 1.0 if passed else 2.0, 1e-12)

    return types.SimpleNamespace(checks=lambda fast: [check], __doc__="Fake.\n\nA fake family.")


@pytest.mark.parametrize("passed", [True, False])
def test_cli_exit_status_follows_the_records(passed, tmp_path, monkeypatch):
    monkeypatch.setitem(report.FAMILIES, "gan", _fake_family(passed))
    assert main(["--family", "gan", "--out", str(tmp_path), "--fast"]) == (0 if passed else 1)
    payload = json.loads((tmp_path / "derivations.json").read_text())
    assert payload["passed"] is passed and payload["records"][0]["name"] == "identity"


def test_a_raising_check_becomes_a_failed_record(tmp_path, monkeypatch):
    def broken():
        raise AttributeError("module 'gen_jax.vae' has no attribute 'iwae_bound'")

    monkeypatch.setitem(report.FAMILIES, "vae", types.SimpleNamespace(checks=lambda fast: [broken], __doc__="x"))
    assert main(["--family", "vae", "--out", str(tmp_path), "--fast"]) == 1
    rec = json.loads((tmp_path / "derivations.json").read_text())["records"][0]
    assert rec["name"] == "error_in_broken" and rec["passed"] is False and "iwae_bound" in rec["note"]
