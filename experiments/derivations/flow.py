"""Normalizing flows: the change of variables, normalisation, sampling, and dequantized bits/dim.

The seed's objective is log p_model(x) = log p_z(f(x)) + log|det df(x)/dx| with f: data -> latent.
Every bijector of ``gen_jax.flows`` returns its log|det| in closed form; here each one (with random,
non-trivial parameters: every entry is drawn from N(0, s^2), so zero-initialised conditioners and
ActNorm's data-dependent initialisation do not make it the identity) is compared with the autodiff
Jacobian, each whole model's ``log_prob`` with log N(f(x); 0, I) + log|det jacfwd(f)|, a 2D
model's density is integrated over the plane, its samples (through f^{-1}) are compared with its
density, and the dequantized bits/dim of 8-bit data is checked to bound the exact discrete
log-likelihood. All in float64.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
import scipy.stats

from experiments.derivations.common import Z, Check, compare, float64, gauss_legendre, jit, mean_and_se
from gen_jax import flows

FAMILY = "flow"
LOG_DET_TOL = 1e-9  # float64 round-off of slogdet of a <= 16 x 16 Jacobian is ~1e-13


# ------------------------------------------------------------------------------------ the layers
def _vec(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.standard_normal(shape)


def _unit(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.uniform(0.02, 0.98, shape)


# name -> (module factory, input shape, input sampler, parameter scale s)
LAYERS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], Callable, float]] = {
    "Affine": (lambda: flows.Affine(scale=-1.7, shift=0.3), (3, 4), _vec, 0.0),
    "Logit": (lambda: flows.Logit(alpha=0.05), (3, 4), _unit, 0.0),
    "Permute": (lambda: flows.Permute("random", seed=3), (3, 5), _vec, 0.0),
    "ActNorm": (lambda: flows.ActNorm(), (8, 3), _vec, 0.3),
    "ActNorm (image)": (lambda: flows.ActNorm(), (4, 4, 4, 2), _vec, 0.3),
    "Squeeze": (lambda: flows.Squeeze(), (2, 4, 4, 2), _vec, 0.0),
    "Invertible1x1Conv (LU)": (lambda: flows.Invertible1x1Conv(lu=True, seed=1), (3, 4), _vec, 0.3),
    "Invertible1x1Conv (plain, image)": (lambda: flows.Invertible1x1Conv(lu=False, seed=2), (2, 4, 4, 3), _vec, 0.3),
    "AffineCoupling": (lambda: flows.AffineCoupling(mask="alternate", parity=1, hidden=(16, 16)), (3, 4), _vec, 0.3),
    "AffineCoupling (checkerboard)": (
        lambda: flows.AffineCoupling(mask="checkerboard", parity=0, hidden=(8,), num_res_blocks=1),
        (2, 4, 4, 2), _vec, 0.3),
    "AdditiveCoupling": (lambda: flows.AdditiveCoupling(mask="channel", parity=0, hidden=(16,)), (3, 4), _vec, 0.3),
    "SplineCoupling": (lambda: flows.SplineCoupling(mask="alternate", hidden=(16,), num_bins=6, bound=2.0), (4, 4),
                       lambda k, s: 1.5 * _vec(k, s), 0.5),
    "MaskedAutoregressive": (lambda: flows.MaskedAutoregressive(hidden=(16, 16)), (3, 4), _vec, 0.3),
}

# name -> (model factory, input shape, input sampler, parameter scale s)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], Callable, float]] = {
    "RealNVP": (lambda: flows.RealNVP(dim=2, num_layers=4, hidden=(16, 16), actnorm=True), (64, 2), _vec, 0.3),
    "NSF": (lambda: flows.NSF(dim=2, num_layers=2, hidden=(16,), num_bins=6, bound=4.0, lu_linear=True), (64, 2),
            _vec, 0.3),
    "MAF": (lambda: flows.MAF(dim=2, num_layers=2, hidden=(16, 16)), (64, 2), _vec, 0.3),
    "Glow": (lambda: flows.Glow(image_shape=(4, 4, 1), num_levels=2, num_steps=1, hidden=(8,)), (4, 4, 4, 1),
             _unit, 0.1),
    "MultiScaleRealNVP": (lambda: flows.MultiScaleRealNVP(image_shape=(4, 4, 1), num_scales=2, hidden=(8,),
                                                          num_res_blocks=1), (4, 4, 4, 1), _unit, 0.1),
}
# The 2D models that are integrated and sampled: gentler parameters, so that the density stays
# inside the quadrature box and its features are resolved by the grid.
DENSITY_SPECS = {
    "RealNVP": (MODELS["RealNVP"][0], (256, 2), _vec, 0.2),
    "NSF": (lambda: flows.NSF(dim=2, num_layers=2, hidden=(16,), num_bins=6, bound=4.0), (256, 2), _vec, 0.3),
    "MAF": (MODELS["MAF"][0], (256, 2), _vec, 0.35),
}
DENSITY_MODELS = tuple(DENSITY_SPECS)


def random_variables(module: nn.Module, x: np.ndarray, scale: float, seed: int) -> dict:
    """Variables of ``module`` with every entry drawn from N(0, scale^2), float64.

    Shapes come from ``jax.eval_shape(module.init, ...)`` (traced, not compiled or run), so no
    initialiser runs; zero-initialised conditioners and ActNorm's data-dependent values are replaced
    by random ones, which makes every layer a non-trivial map.
    """
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.asarray(x, jnp.float32))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), jnp.float64), shapes)


def build(spec, seed: int):
    """``(module, float64 variables, float64 input)`` for a :data:`LAYERS` / :data:`MODELS` entry."""
    factory, shape, sampler, scale = spec
    module = factory()
    x = sampler(np.random.default_rng(seed), shape)
    return module, random_variables(module, x, scale, seed + 1), jnp.asarray(x, jnp.float64)


def _jacobian_report(module: nn.Module, variables, x: jax.Array, *, model: bool):
    """Explicit log-det (and log_prob for a model), slogdet of the per-example jacfwd, and f(x)."""
    shape = x.shape[1:]

    def f_flat(v):
        z, _ = module.apply(variables, v.reshape((1,) + shape), method="forward")
        return z.reshape(-1)

    z, log_det = module.apply(variables, x, method="forward")
    sign, logabsdet = jnp.linalg.slogdet(jax.vmap(jax.jacfwd(f_flat))(x.reshape(x.shape[0], -1)))
    out = {"log_det": log_det, "sign": sign, "slogdet": logabsdet, "z": z.reshape(x.shape[0], -1)}
    if model:
        out["log_prob"] = module.apply(variables, x, method="log_prob")
    return out


@functools.lru_cache(maxsize=None)
def jacobian_report(kind: str, name: str, seed: int = 0) -> dict[str, np.ndarray]:
    """The report of one :data:`LAYERS` (kind 'layer') or :data:`MODELS` (kind 'model') entry."""
    spec = (LAYERS if kind == "layer" else MODELS)[name]
    module, variables, x = build(spec, seed)
    report = jit(functools.partial(_jacobian_report, module, model=kind == "model"))(variables, x)
    return jax.tree.map(np.asarray, report)


@float64
def check_layer_log_det(name: str, report: dict[str, np.ndarray] | None = None) -> Check:
    """A layer's explicit log|det df/dx| == log|det jacfwd(f)| per example.

    ``report`` (from :func:`jacobian_report_of`) lets a caller check any bijector; by default the
    layer ``name`` of :data:`LAYERS` is used.
    """
    r = report if report is not None else jacobian_report("layer", name)
    lhs, rhs = r["log_det"], np.where(r["sign"] != 0, r["slogdet"], np.nan)
    return compare(
        FAMILY, f"log_det_{name.replace(' ', '_').replace('(', '').replace(')', '').replace(',', '')}",
        f"{name}: the explicit log-determinant equals the autodiff Jacobian's",
        r"\texttt{log\_det}(x) = \log\left|\det \frac{\partial f(x)}{\partial x}\right|",
        lhs, rhs, LOG_DET_TOL * (1 + np.abs(rhs)),
        lhs_how=f"flows.{name.split(' ')[0]}.forward(x)[1], random parameters, batch of {lhs.shape[0]}",
        rhs_how="slogdet(jax.jacfwd(forward)) per example",
        note="float64; relative tolerance 1e-9 (worst example shown).")


def jacobian_report_of(module: nn.Module, variables, x: jax.Array) -> dict[str, np.ndarray]:
    """:func:`_jacobian_report` of any bijector (e.g. a deliberately wrong one in the tests)."""
    return jax.tree.map(np.asarray, jit(functools.partial(_jacobian_report, module, model=False))(variables, x))


@float64
def check_model_change_of_variables(name: str) -> list[Check]:
    """A whole model: log-det vs slogdet(jacfwd), and log_prob == log N(f(x); 0, I) + slogdet."""
    r = jacobian_report("model", name)
    slog = np.where(r["sign"] != 0, r["slogdet"], np.nan)
    z = r["z"]
    log_pz = np.sum(-0.5 * (np.log(2 * np.pi) + z**2), axis=-1)
    log_det = compare(
        FAMILY, f"model_log_det_{name}", f"{name}: the model's summed log-determinant equals the autodiff Jacobian's",
        r"\sum_i \log|\det J_{f_i}| = \log\left|\det \frac{\partial (f_n \circ \dots \circ f_1)(x)}{\partial x}\right|",
        r["log_det"], slog, LOG_DET_TOL * (1 + np.abs(slog)),
        lhs_how=f"flows.{name}.forward(x)[1] (Chain: sum of the layers' log-dets), random parameters",
        rhs_how="slogdet(jax.jacfwd(model.forward)) per example", note="float64; relative tolerance 1e-9.")
    log_prob = compare(
        FAMILY, f"model_log_prob_{name}", f"{name}: log_prob is the seed's change of variables",
        r"\log p_\mathrm{model}(x) = \log p_z(f(x)) + \log\left|\det \frac{\partial f(x)}{\partial x}\right|",
        r["log_prob"], log_pz + slog, LOG_DET_TOL * (1 + np.abs(log_pz + slog)),
        lhs_how=f"flows.{name}.log_prob(x)",
        rhs_how="log N(f(x); 0, I) in numpy + slogdet(jax.jacfwd(f)) (independent of the explicit log-dets)",
        note="float64; relative tolerance 1e-9.")
    return [log_det, log_prob]


# ------------------------------------------------------------------------ normalisation, sampling
BOX, PANELS, ORDER, BIN_PANELS = 7.0, 56, 8, 4  # [-7, 7]^2, 0.25-wide panels, 1.0-wide histogram bins
DENSITY_TOL = 5e-4


@functools.lru_cache(maxsize=None)
def density_grid(name: str, seed: int = 1, num_samples: int = 20_000) -> dict[str, np.ndarray]:
    """A 2D model's density on a tensor Gauss-Legendre grid over [-7, 7]^2, and samples of it.

    Returns ``{'density': [N, N], 'samples': [num_samples, 2]}``; the grid is :func:`gauss_legendre`
    (``PANELS`` panels of ``ORDER`` nodes per axis).
    """
    nodes, _ = gauss_legendre(-BOX, BOX, PANELS, ORDER)
    grid = np.stack(np.meshgrid(nodes, nodes, indexing="ij"), axis=-1).reshape(-1, 2)
    module, variables, _ = build(DENSITY_SPECS[name], seed)

    @jit
    def run(variables, grid, key):
        log_p = module.apply(variables, grid, method="log_prob")
        samples = module.apply(variables, key, num_samples, method="sample")
        return {"density": jnp.exp(log_p).reshape(nodes.shape[0], nodes.shape[0]), "samples": samples}

    return jax.tree.map(np.asarray, run(variables, jnp.asarray(grid), jax.random.key(seed)))


@float64
def check_density_normalised(name: str, density: np.ndarray | None = None) -> Check:
    """int p_model(x) dx over the plane == 1 (2D Gauss-Legendre quadrature of exp(log_prob))."""
    nodes, w = gauss_legendre(-BOX, BOX, PANELS, ORDER)
    dens = density if density is not None else density_grid(name)["density"]
    total = float(w @ dens @ w)
    return compare(
        FAMILY, f"density_integrates_to_one_{name}", f"{name}: the model density integrates to 1",
        r"\int_{\mathbb{R}^2} p_z(f(x))\, \left|\det \tfrac{\partial f}{\partial x}\right| dx = 1",
        total, 1.0, DENSITY_TOL,
        lhs_how=f"2D Gauss-Legendre quadrature ({PANELS}x{ORDER} nodes per axis on [-{BOX:g}, {BOX:g}]^2) of "
                f"exp(flows.{name}.log_prob), random parameters",
        rhs_how="1",
        note=f"Tolerance {DENSITY_TOL:g} covers the mass outside the box (the parameters are chosen so that "
             "it is below 1e-4) and the quadrature error.")


@float64
def check_samples_follow_density(name: str, grids: dict[str, np.ndarray] | None = None) -> Check:
    """Samples x = f^{-1}(z), z ~ N(0, I) (library ``sample``) follow exp(log_prob): chi-square test.

    Bin probabilities are quadratures of the density over 1 x 1 bins of [-7, 7]^2; bins with fewer
    than 5 expected samples are pooled with the outside of the box.
    """
    g = grids if grids is not None else density_grid(name)
    dens, samples = g["density"], g["samples"]
    nodes, w = gauss_legendre(-BOX, BOX, PANELS, ORDER)
    n_bins = PANELS // BIN_PANELS
    per_bin = BIN_PANELS * ORDER
    cell = (w[:, None] * w[None, :]) * dens
    probs = cell.reshape(n_bins, per_bin, n_bins, per_bin).sum(axis=(1, 3)).reshape(-1)
    edges = np.linspace(-BOX, BOX, n_bins + 1)
    counts, _, _ = np.histogram2d(samples[:, 0], samples[:, 1], bins=[edges, edges])
    counts = counts.reshape(-1)
    n = samples.shape[0]
    keep = probs * n >= 5
    exp_rest = max(n * (1.0 - probs[keep].sum()), 1e-12)
    obs_rest = n - counts[keep].sum()
    expected = np.concatenate([n * probs[keep], [exp_rest]])
    observed = np.concatenate([counts[keep], [obs_rest]])
    stat = float(np.sum((observed - expected) ** 2 / expected))
    dof = expected.shape[0] - 1
    critical = float(scipy.stats.chi2.ppf(1 - 1e-3, dof))

    def plot(path):
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
        extent = (-BOX, BOX, -BOX, BOX)
        axes[0].imshow(dens.T, origin="lower", extent=extent, cmap="viridis")
        axes[0].set_title(f"{name}: exp(log_prob)")
        axes[1].hist2d(samples[:, 0], samples[:, 1], bins=112, range=[[-BOX, BOX], [-BOX, BOX]], cmap="viridis")
        axes[1].set_title(f"{name}: {n} samples f^-1(z)")
        for ax in axes:
            ax.set_xlim(-4, 4)
            ax.set_ylim(-4, 4)
            ax.set_aspect("equal")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    return compare(
        FAMILY, f"samples_follow_density_{name}", f"{name}: samples through the inverse follow the density",
        r"x = f^{-1}(z),\ z \sim \mathcal{N}(0, I) \;\Rightarrow\; x \sim p_\mathrm{model}:\ "
        r"X^2 = \textstyle\sum_b \frac{(n_b - N P_b)^2}{N P_b} \le \chi^2_{\mathrm{dof},\,0.999}",
        stat, critical, 0.0, relation="<=",
        lhs_how=f"chi-square statistic of {n} samples of flows.{name}.sample in {dof + 1} bins",
        rhs_how="0.999 quantile of chi^2 with "
                f"{dof} degrees of freedom; P_b by quadrature of exp(log_prob) over each bin",
        note="A sampler that does not invert f (or a wrong density) fails at once; a correct one fails "
             "with probability 1e-3.", plot=plot)


# --------------------------------------------------------------------------- dequantized bits/dim
class ElementwiseFlow(flows.FlowModel):
    """``f = ActNorm o Logit`` on [0, 1)^D: element-wise, so its discrete bin masses are exact CDF
    differences Phi(f(hi)) - Phi(f(lo))."""

    dim: int = 3
    alpha: float = 0.05

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    def setup(self):
        self.bijector = flows.Chain((flows.Logit(alpha=self.alpha), flows.ActNorm()))


def dequantization_setting(seed: int = 2, num_points: int = 12):
    """An ElementwiseFlow with random ActNorm parameters and 8-bit data drawn from it.

    Returns (model, float64 variables, x uint8 [num_points, 3], log_scale [3], bias [3]).
    """
    model = ElementwiseFlow()
    variables = random_variables(model, np.full((2, 3), 0.5), 0.3, seed)
    act = variables["params"]["bijector"]["layers_1"]
    log_scale, bias = np.asarray(act["log_scale"]), np.asarray(act["bias"])
    # Data from the model itself, by inverting the CDF in numpy: y = (sigmoid(logit_p) - alpha)/(1 - 2 alpha).
    z = np.random.default_rng(seed).standard_normal((num_points, 3))
    logit_p = (z - bias) * np.exp(-log_scale)
    y = (scipy.special.expit(logit_p) - model.alpha) / (1 - 2 * model.alpha)
    x = np.clip(np.floor(256 * y), 0, 255).astype(np.uint8)
    return model, variables, x, log_scale, bias


def exact_discrete_log_prob(x: np.ndarray, log_scale: np.ndarray, bias: np.ndarray, alpha: float) -> np.ndarray:
    """log P(x) = sum_i log[Phi(f(hi_i)) - Phi(f(lo_i))], hi = (x + 1)/256, lo = x/256 (numpy, float64)."""

    def f(y):
        p = alpha + (1 - 2 * alpha) * y
        return (np.log(p) - np.log1p(-p)) * np.exp(log_scale) + bias

    lo, hi = f(x / 256.0), f((x + 1.0) / 256.0)
    # log(Phi(hi) - Phi(lo)) computed on the side of the tail where it is accurate.
    upper = lo > 0
    a, b = np.where(upper, -lo, hi), np.where(upper, -hi, lo)
    la, lb = scipy.special.log_ndtr(a), scipy.special.log_ndtr(b)
    return np.sum(la + np.log1p(-np.exp(lb - la)), axis=-1)


@float64
def check_dequantization_bound(quad_order: int = 4) -> Check:
    """E_u[bits/dim of the dequantized data] (library) >= exact discrete -log2 P(x) / D (Jensen).

    The expectation over u ~ U[0, 1)^D is a Gauss-Legendre quadrature (``quad_order``^3 nodes) of
    the library's ``bits_per_dim(discrete_nll_nats(log_prob((x + u) / 256), D), D)``, so no Monte
    Carlo error enters; P(x) is the exact bin mass of the element-wise flow.
    """
    model, variables, x, log_scale, bias = dequantization_setting()
    d = x.shape[1]
    u1, w1 = gauss_legendre(0.0, 1.0, 1, quad_order)
    u = np.stack(np.meshgrid(u1, u1, u1, indexing="ij"), -1).reshape(-1, d)  # [Q, 3]
    wq = np.einsum("i,j,k->ijk", w1, w1, w1).reshape(-1)

    @jit
    def bpd(variables, y):  # y [Q, B, D] -> bits/dim [Q, B]
        log_p = jax.vmap(lambda v: model.apply(variables, v, method="log_prob"))(y)
        return flows.bits_per_dim(flows.discrete_nll_nats(log_p, d), d)

    y = (x[None].astype(np.float64) + u[:, None, :]) / 256.0
    lhs = wq @ np.asarray(bpd(variables, jnp.asarray(y)))  # [B]
    rhs = -exact_discrete_log_prob(x, log_scale, bias, model.alpha) / (d * math.log(2))
    return compare(
        FAMILY, "dequantization_bound", "Dequantized bits/dim bounds the discrete bits/dim of 8-bit data",
        r"\mathbb{E}_{u\sim U[0,1)^D}\!\left[-\log_2 p_\mathrm{model}\!\left(\tfrac{x+u}{256}\right) + D \log_2 "
        r"256\right] / D"
        r"\;\ge\; -\log_2 P(x) / D,\quad P(x) = \int_{[0,1)^D} p_\mathrm{model}\!\left(\tfrac{x+u}{256}\right) "
        r"256^{-D} du",
        lhs, rhs, 1e-12, relation=">=",
        lhs_how=f"flows.bits_per_dim(flows.discrete_nll_nats(log_prob((x + u)/256), 3), 3), Gauss-Legendre in u "
                f"({quad_order ** 3} nodes), {x.shape[0]} data points",
        rhs_how="exact bin mass of the element-wise flow (Logit + ActNorm): prod_i [Phi(f(hi_i)) - Phi(f(lo_i))] "
                "(numpy)",
        note="Jensen's inequality; the gap is the KL between the uniform and the model within the bin "
             f"(here at most {float(np.max(lhs - rhs)):.1e} bits/dim). Smallest margin shown.")


@float64
def check_dequantized_nll_monte_carlo(num_keys: int, quad_order: int = 4) -> Check:
    """The library's end-to-end flow_nll on uint8 data (random dequantization) == its expectation."""
    model, variables, x, log_scale, bias = dequantization_setting()
    d = x.shape[1]
    params = variables["params"]
    u1, w1 = gauss_legendre(0.0, 1.0, 1, quad_order)
    u = np.stack(np.meshgrid(u1, u1, u1, indexing="ij"), -1).reshape(-1, d)
    wq = np.einsum("i,j,k->ijk", w1, w1, w1).reshape(-1)

    @jit
    def run(params, x, y):
        nll = jax.vmap(lambda k: flows.flow_nll(model, params, x, k))(jax.random.split(jax.random.key(3), num_keys))
        quad = jax.vmap(lambda v: flows.discrete_nll_nats(model.apply({"params": params}, v, method="log_prob"), d))(y)
        return nll, quad

    y = (x[None].astype(np.float64) + u[:, None, :]) / 256.0
    nll, quad = map(np.asarray, run(params, jnp.asarray(x), jnp.asarray(y)))
    mc, se = mean_and_se(nll)
    return compare(
        FAMILY, "dequantized_nll_monte_carlo", "flow_nll on uint8 data is an unbiased estimate of the dequantized NLL",
        r"\mathbb{E}_u[\texttt{flow\_nll}(x)] = \int_{[0,1)^D} \left[-\log "
        r"p_\mathrm{model}\!\left(\tfrac{x+u}{256}\right) + D\log 256\right] du",
        mc, wq @ quad, Z * se,
        lhs_how=f"mean of flows.flow_nll(model, params, x_uint8, key) over {num_keys} keys (uniform_dequantize inside)",
        rhs_how="Gauss-Legendre quadrature over u of the same integrand",
        note=f"Monte Carlo: tolerance {Z:g} standard errors per data point.")


# ------------------------------------------------------------------------------------------ run
FAST_MODELS = ("MAF", "Glow")  # --fast: the other models only in the full report
FAST_DENSITY_MODELS = ("MAF",)


def checks(fast: bool) -> list[Callable[[], Check | Sequence[Check]]]:
    """Every flow check, as thunks; ``fast`` checks every layer but fewer whole models and samples."""
    out: list[Callable[[], Check | Sequence[Check]]] = [functools.partial(check_layer_log_det, n) for n in LAYERS]
    out += [functools.partial(check_model_change_of_variables, n) for n in (FAST_MODELS if fast else MODELS)]
    num_samples = 20_000 if fast else 200_000
    for name in FAST_DENSITY_MODELS if fast else DENSITY_MODELS:
        out.append(lambda name=name: check_density_normalised(
            name, density_grid(name, num_samples=num_samples)["density"]))
        out.append(lambda name=name: check_samples_follow_density(name, density_grid(name, num_samples=num_samples)))
    out.append(check_dequantization_bound)
    out.append(functools.partial(check_dequantized_nll_monte_carlo, num_keys=200 if fast else 2000))
    return out
