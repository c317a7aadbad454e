"""GAN: the optimal discriminator, the value at the optimum, and the two generator gradients.

Setting (1D, exact densities): p_data = 0.5 N(-1, 0.6^2) + 0.5 N(1.5, 0.4^2); the generator is the
library's ``MLPGenerator(out_dim=1, hidden=())``, a linear map G(z) = 1.1 z + 0.3 of z ~ N(0, 1), so
p_g = N(0.3, 1.1^2) exactly. Integrals over x use a composite Gauss-Legendre rule on [-14, 14]
(3200 nodes; the mass outside is below 1e-30 and the integrands are smooth, so the quadrature error
is at float64 round-off).

Derivation (Goodfellow et al. 2014): V(D, G) = int [p_data log D + p_g log(1 - D)] dx; pointwise in x,
a log y + b log(1 - y) is concave in y with its maximum at y = a / (a + b), so
D* = p_data / (p_data + p_g), and substituting, V(D*, G) = -log 4 + 2 JSD(p_data || p_g).
For any other D, V(D*) - V(D) = int (p_data + p_g) KL(Bern(D*(x)) || Bern(D(x))) dx >= 0.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from experiments.derivations.common import Z, Check, compare, float64, gauss_legendre, jit
from gen_jax import gan
from gen_jax.train import TrainState, make_optimizer, make_train_step

FAMILY = "gan"
# p_data: (weight, mean, std) per component; p_g = N(G_BIAS, G_SCALE^2) via G(z) = G_SCALE z + G_BIAS.
DATA_COMPONENTS = ((0.5, -1.0, 0.6), (0.5, 1.5, 0.4))
G_SCALE, G_BIAS = 1.1, 0.3
QUAD_TOL = 1e-10
GENERATOR = gan.MLPGenerator(out_dim=1, hidden=())


# ------------------------------------------------------------------------------------ the setting
def log_p_data(x: jax.Array) -> jax.Array:
    """log p_data(x) of the two-component mixture, elementwise."""
    comps = [math.log(w) - 0.5 * math.log(2 * math.pi * s * s) - 0.5 * jnp.square((x - m) / s)
             for w, m, s in DATA_COMPONENTS]
    return logsumexp(jnp.stack(comps), axis=0)


def log_p_g(x: jax.Array) -> jax.Array:
    """log p_g(x) = log N(x; G_BIAS, G_SCALE^2), the density of G(z), z ~ N(0, 1)."""
    return -0.5 * math.log(2 * math.pi * G_SCALE**2) - 0.5 * jnp.square((x - G_BIAS) / G_SCALE)


def sample_p_data(key: jax.Array, n: int) -> jax.Array:
    """``n`` samples of p_data, shape [n, 1]."""
    k_comp, k_eps = jax.random.split(key)
    weights = jnp.asarray([w for w, _, _ in DATA_COMPONENTS])
    comp = jax.random.choice(k_comp, len(DATA_COMPONENTS), (n,), p=weights)
    means = jnp.asarray([m for _, m, _ in DATA_COMPONENTS])[comp]
    stds = jnp.asarray([s for _, _, s in DATA_COMPONENTS])[comp]
    return (means + stds * jax.random.normal(k_eps, (n,)))[:, None]


def generator_params(scale: float = G_SCALE, bias: float = G_BIAS) -> dict:
    """Parameters of the library's linear generator G(z) = scale * z + bias."""
    return {"Dense_0": {"kernel": jnp.full((1, 1), scale), "bias": jnp.full((1,), bias)}}


def quadrature() -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights on [-14, 14] (200 panels x 16 Gauss-Legendre nodes)."""
    return gauss_legendre(-14.0, 14.0, 200, 16)


def optimal_logits(x: jax.Array) -> jax.Array:
    """logit D*(x) = log p_data(x) - log p_g(x), i.e. D* = p_data / (p_data + p_g)."""
    return log_p_data(x) - log_p_g(x)


def value_by_quadrature(logits: jax.Array, x: jax.Array, w: jax.Array) -> jax.Array:
    """V(D, G) = int [p_data log D + p_g log(1 - D)] dx with the library's per-example loss terms.

    ``discriminator_loss_terms(l, l, 'minimax')`` returns (-log D(x), -log(1 - D(x))) at each node.
    """
    real_terms, fake_terms = gan.discriminator_loss_terms(logits, logits, "minimax")
    return -jnp.sum(w * (jnp.exp(log_p_data(x)) * real_terms + jnp.exp(log_p_g(x)) * fake_terms))


def jsd_by_quadrature() -> float:
    """JSD(p_data || p_g) = 1/2 KL(p_data || m) + 1/2 KL(p_g || m), m = (p_data + p_g) / 2 (numpy)."""
    x, w = quadrature()
    comps = [w_ * np.exp(-0.5 * ((x - m) / s) ** 2) / (s * math.sqrt(2 * math.pi)) for w_, m, s in DATA_COMPONENTS]
    pd = np.sum(comps, axis=0)
    pg = np.exp(-0.5 * ((x - G_BIAS) / G_SCALE) ** 2) / (G_SCALE * math.sqrt(2 * math.pi))
    m = 0.5 * (pd + pg)

    def kl(p):
        return np.sum(w * np.where(p > 0, p * (np.log(np.maximum(p, 1e-300)) - np.log(m)), 0.0))

    return float(0.5 * kl(pd) + 0.5 * kl(pg))


def _formula_vstar() -> str:
    return r"V(D^*, G) = -\log 4 + 2\,\mathrm{JSD}(p_\mathrm{data} \,\|\, p_g)"


EPSILONS = (-1.0, -0.1, -1e-2, 1e-2, 0.1, 1.0)


def perturbations(x: jax.Array) -> jax.Array:
    """Directions h(x) along which the logit of D* is perturbed, ``[5, N]``."""
    return jnp.stack([jnp.ones_like(x), x, jnp.sin(2.0 * x), jnp.exp(-jnp.square(x - 1.0)), jnp.tanh(x)])


@functools.lru_cache(maxsize=None)
def analyse(logits_fn=optimal_logits) -> dict[str, np.ndarray]:
    """One compiled pass over the quadrature nodes for the discriminator ``sigmoid(logits_fn(x))``.

    Returns V (library loss terms, quadrature), dV/dlogit per node (autodiff, divided by the weight)
    and V along every perturbation ``logit + eps h`` (:func:`perturbations` x :data:`EPSILONS`).
    """
    x, w = map(jnp.asarray, quadrature())

    @jit
    def run(x, w):
        logits = logits_fn(x)
        v, grad = jax.value_and_grad(value_by_quadrature)(logits, x, w)
        v_pert = jax.vmap(jax.vmap(lambda h, e: value_by_quadrature(logits + e * h, x, w), (None, 0)), (0, None))(
            perturbations(x), jnp.asarray(EPSILONS))
        return {"value": v, "grad": grad / w, "value_perturbed": v_pert}

    return jax.tree.map(np.asarray, run(x, w))


# --------------------------------------------------------------------------------------- checks
@float64
def check_value_at_optimum(logits_fn=optimal_logits) -> Check:
    """V(D*, G) (library loss terms, quadrature) == -log 4 + 2 JSD (independent quadrature)."""
    lhs = analyse(logits_fn)["value"]
    rhs = -math.log(4.0) + 2.0 * jsd_by_quadrature()
    return compare(
        FAMILY, "value_at_optimum", "The value of the game at D* is -log 4 + 2 JSD", _formula_vstar(),
        lhs, rhs, QUAD_TOL,
        lhs_how="quadrature of -(p_data * real_terms + p_g * fake_terms) with "
                "gan.discriminator_loss_terms(l*, l*, 'minimax'), l* = log p_data - log p_g",
        rhs_how="-log 4 + 2 JSD, JSD = (KL(p_data||m) + KL(p_g||m))/2 by quadrature of the densities",
        note="Gauss-Legendre, 3200 nodes on [-14, 14]: quadrature error ~1e-14; tolerance 1e-10.")


@float64
def check_value_function_mc(seed: int, n: int, logits_fn=optimal_logits) -> Check:
    """gan.value_function on samples x ~ p_data and G(z) == -log 4 + 2 JSD, within Z standard errors."""

    @jit
    def estimate(key):
        k_real, k_fake = jax.random.split(key)
        real = sample_p_data(k_real, n)[:, 0]
        fake = gan.generate(GENERATOR, generator_params(), k_fake, n, latent_dim=1)[:, 0]
        l_real, l_fake = logits_fn(real), logits_fn(fake)
        var = jnp.var(gan.log_d(l_real)) + jnp.var(gan.log_one_minus_d(l_fake))
        return gan.value_function(l_real, l_fake), jnp.sqrt(var / n)

    lhs, se = map(float, estimate(jax.random.key(seed)))
    rhs = -math.log(4.0) + 2.0 * jsd_by_quadrature()
    return compare(
        FAMILY, "value_function_monte_carlo", "The library's Monte Carlo V at D* matches -log 4 + 2 JSD",
        _formula_vstar(), lhs, rhs, Z * se,
        lhs_how=f"gan.value_function(l*(x), l*(G(z))) with {n} x ~ p_data and {n} G(z) from "
                "gan.generate(MLPGenerator)",
        rhs_how="-log 4 + 2 JSD by quadrature",
        note=f"Monte Carlo: tolerance {Z:g} standard errors (SE = {se:.2e}).")


@float64
def check_stationarity(logits_fn=optimal_logits) -> Check:
    """The functional derivative of V w.r.t. the logit vanishes at D* (autodiff of the library's V)."""
    return compare(
        FAMILY, "optimum_is_stationary", "D* is a stationary point of V (pointwise in x)",
        r"\frac{\delta V}{\delta\, \mathrm{logit}\, D(x)}\Big|_{D^*} = p_\mathrm{data}(x)(1 - D^*(x)) - p_g(x) "
        r"D^*(x) = 0",
        analyse(logits_fn)["grad"], 0.0, 1e-12,
        lhs_how="jax.grad of the quadrature of the library's loss terms w.r.t. the logit at each node, / weight",
        rhs_how="0 (the maximiser of a log y + b log(1 - y) is y = a / (a + b))",
        note="Worst node of 3200 shown; float64 round-off ~1e-16, tolerance 1e-12.")


@float64
def check_maximiser(logits_fn=optimal_logits) -> Check:
    """V(D*) >= V(D) for D with logit l* + eps h, every direction h and step eps (library V)."""
    res = analyse(logits_fn)
    v_star, v_max = res["value"], np.max(res["value_perturbed"])
    return compare(
        FAMILY, "optimum_maximises_value", "V at D* is at least V at every perturbed discriminator",
        r"V(D^*, G) \ge \max_{h,\epsilon} V(\sigma(\mathrm{logit}\,D^* + \epsilon h), G)",
        v_star, v_max, 0.0, relation=">=",
        lhs_how="V(D*) by quadrature of the library's loss terms",
        rhs_how=f"max of V over 5 directions h (1, x, sin 2x, a bump, tanh x) x eps in {list(EPSILONS)}",
        note=f"Inequality; the smallest margin V(D*) - V(D) is {float(v_star - v_max):.3e} (at eps = +-0.01).")


def train_discriminator(key: jax.Array, num_steps: int, batch_size: int = 512) -> dict[str, np.ndarray]:
    """Trains the library's MLPDiscriminator on V (minimax loss) against the fixed linear generator.

    Uses ``gan.GAN.d_loss`` for the objective and ``gen_jax.train.make_train_step`` for the
    update; each step draws a fresh real batch from p_data. Returns, at the quadrature nodes, the
    trained and optimal logits, log p_data, log p_g, and V (library terms) at both discriminators.
    """
    disc = gan.MLPDiscriminator(hidden=(64, 64))
    model = gan.GAN(GENERATOR, disc, latent_dim=1, loss="minimax")
    g_params = generator_params()

    def loss_fn(params, model_state, batch, rng):  # the discriminator's, with G fixed
        del batch
        k_real, k_step = jax.random.split(rng)
        loss, (metrics, _) = model.d_loss({"g": g_params, "d": params}, {"g": {}, "d": model_state},
                                          {"x": sample_p_data(k_real, batch_size)}, k_step)
        return loss, (metrics, model_state)

    tx = make_optimizer(learning_rate=1e-2, schedule="cosine", num_steps=num_steps)
    step = make_train_step(loss_fn, donate=False)

    @jit
    def train(key, x, w):
        k_init, k_state = jax.random.split(key)
        params = disc.init(k_init, jnp.zeros((1, 1), jnp.float32))["params"]
        state = TrainState.create(params=params, tx=tx, key=k_state)
        # All steps in one compiled loop (the library's step is traced once inside it).
        state = jax.lax.fori_loop(0, num_steps, lambda i, s: step(s, {})[0], state)
        l_trained = disc.apply({"params": state.params}, x[:, None]).astype(x.dtype)
        l_star = optimal_logits(x)
        return {"l_trained": l_trained, "l_star": l_star, "log_pd": log_p_data(x), "log_pg": log_p_g(x),
                "v_trained": value_by_quadrature(l_trained, x, w), "v_star": value_by_quadrature(l_star, x, w)}

    x, w = map(jnp.asarray, quadrature())
    return jax.tree.map(np.asarray, train(key, x, w))


def _plot_discriminator(x, pd, pg, d_star, d_trained):
    def plot(path):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(x, pd, label=r"$p_\mathrm{data}$", color="C0")
        ax.plot(x, pg, label=r"$p_g$", color="C1")
        ax.plot(x, d_star, "k-", lw=2, label=r"$p_\mathrm{data}/(p_\mathrm{data}+p_g)$")
        ax.plot(x, d_trained, "r--", lw=2, label="trained D (library MLPDiscriminator)")
        ax.set_xlim(-4, 5)
        ax.set_xlabel("x")
        ax.legend(loc="upper left", fontsize=8)
        ax.set_title("Optimal discriminator: formula vs trained")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    return plot


@float64
def check_trained_discriminator(seed: int, num_steps: int, batch_size: int = 512,
                                tolerance: float = 0.02) -> tuple[Check, Check]:
    """A discriminator trained on the library's objective approaches D*; V's gap is a Bernoulli KL.

    Returns two records: the m-weighted mean |D_trained - D*| (m = (p_data + p_g)/2) against a
    tolerance, and the exact identity V(D*) - V(D) = int (p_data + p_g) KL(Bern(D*) || Bern(D)) dx
    evaluated at the trained D.
    """
    x, w = quadrature()
    res = train_discriminator(jax.random.key(seed), num_steps, batch_size)
    l_trained, l_star = res["l_trained"], res["l_star"]
    pd, pg = np.exp(res["log_pd"]), np.exp(res["log_pg"])
    d_trained, d_star = 1.0 / (1.0 + np.exp(-l_trained)), 1.0 / (1.0 + np.exp(-l_star))
    dist = np.sum(w * 0.5 * (pd + pg) * np.abs(d_trained - d_star))
    sel = (x > -4) & (x < 5)
    plot = _plot_discriminator(*(a[sel] for a in (x, pd, pg, d_star, d_trained)))
    trained = compare(
        FAMILY, "trained_discriminator_is_optimal",
        "A discriminator trained on V approaches p_data / (p_data + p_g)",
        r"\mathbb{E}_{x \sim (p_\mathrm{data}+p_g)/2}\, |D_\mathrm{trained}(x) - D^*(x)| \approx 0",
        dist, 0.0, tolerance, relation="<=",
        lhs_how=f"MLPDiscriminator(64, 64) trained {num_steps} steps (Adam, fresh batches of {batch_size}) with "
                "gan.GAN(loss='minimax').d_loss via gen_jax.train.make_train_step",
        rhs_how="D* = p_data / (p_data + p_g) from the known densities",
        note=f"Optimisation and finite-sample error; tolerance {tolerance} (a mean absolute error in "
             "probability).", plot=plot)
    gap_lib = res["v_star"] - res["v_trained"]
    ds, dt = d_star, d_trained
    kl_bern = ds * (np.log(ds) - np.log(dt)) + (1 - ds) * (np.log1p(-ds) - np.log1p(-dt))
    gap_ind = float(np.sum(w * (pd + pg) * kl_bern))
    gap = compare(
        FAMILY, "value_gap_is_bernoulli_kl", "V(D*) - V(D) is a (p_data + p_g)-weighted Bernoulli KL",
        r"V(D^*, G) - V(D, G) = \int (p_\mathrm{data} + p_g)\, \mathrm{KL}(\mathrm{Bern}(D^*) \,\|\, "
        r"\mathrm{Bern}(D))\, dx \;\ge 0",
        gap_lib, gap_ind, QUAD_TOL,
        lhs_how="difference of the library's V (quadrature of the loss terms) at D* and at the trained D",
        rhs_how="quadrature of (p_data + p_g) [D* log(D*/D) + (1 - D*) log((1 - D*)/(1 - D))] (numpy)",
        note="Exact identity for any D, evaluated at the trained one; quadrature error ~1e-14.")
    return trained, gap


LOGIT_GRID = np.linspace(-30.0, 6.0, 361)


@functools.lru_cache(maxsize=None)
def _logit_gradients() -> dict[str, np.ndarray]:
    """d/dl sum_i generator_loss_terms(l_i, kind) on :data:`LOGIT_GRID`, for both kinds (one compile)."""

    @jit
    def grads(l):
        return {k: jax.grad(lambda v: jnp.sum(gan.generator_loss_terms(v, k)))(l)
                for k in ("minimax", "non_saturating")}

    return jax.tree.map(np.asarray, grads(jnp.asarray(LOGIT_GRID)))


@float64
def check_logit_gradient(kind: str) -> Check:
    """d/dl of the library's generator loss per fake example == -D (minimax) or -(1 - D) (non-sat.)."""
    grad = _logit_gradients()[kind]
    d = 1.0 / (1.0 + np.exp(-LOGIT_GRID))
    if kind == "minimax":
        rhs = -d
        formula = r"\frac{\partial}{\partial l} \log(1 - D(G(z))) = -D(G(z)) \to 0 \text{ as } D(G(z)) \to 0"
        title = "Saturating (minimax) generator gradient is -D(G(z)): it vanishes as D(G(z)) -> 0"
    else:
        rhs = -(1.0 - d)
        formula = (r"\frac{\partial}{\partial l} \left[-\log D(G(z))\right] = -(1 - D(G(z))) \to -1 "
                   r"\text{ as } D(G(z)) \to 0")
        title = "Non-saturating generator gradient is -(1 - D(G(z))): it stays ~-1 as D(G(z)) -> 0"
    return compare(
        FAMILY, f"logit_gradient_{kind}", title, formula, grad, rhs, 1e-12 * np.abs(rhs),
        lhs_how=f"jax.grad of gan.generator_loss_terms(l, '{kind}') at 361 logits l in [-30, 6]",
        rhs_how="closed form with D = 1 / (1 + exp(-l)) (numpy)",
        note="Relative tolerance 1e-12, so the check holds down to D(G(z)) ~ 1e-13.")


DISC_SLOPE = 4.0  # the fixed discriminator l(x) = a (x - c) of the generator-gradient checks
SATURATED_OFFSET = 5.0  # c with mean D(G(z)) ~ 1e-5
SWEEP_OFFSETS = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, SATURATED_OFFSET)


@functools.lru_cache(maxsize=None)
def _generator_gradients(seed: int, n: int) -> dict:
    """Library generator-loss gradients w.r.t. (w, b) of G for every offset c in :data:`SWEEP_OFFSETS`
    and both kinds (one compile), plus the z that the loss draws from its key."""
    key = jax.random.key(seed)
    disc = gan.MLPDiscriminator(hidden=())
    losses = {k: gan.GAN(GENERATOR, disc, latent_dim=1, loss=k).g_loss for k in ("minimax", "non_saturating")}
    batch = {"x": jnp.zeros((n, 1))}

    def one(g_loss_fn, c):
        d_params = {"_ProjectionHead_0": {"Dense_0": {"kernel": jnp.full((1, 1), DISC_SLOPE),
                                                      "bias": jnp.full((1,), -DISC_SLOPE * c)}}}
        grads = jax.grad(lambda g: g_loss_fn({"g": g, "d": d_params}, {"g": {}, "d": {}}, batch, key)[0])(
            generator_params())["Dense_0"]
        return jnp.stack([grads["kernel"][0, 0], grads["bias"][0]])

    @jit
    def run(offsets):
        out = {k: jax.vmap(lambda c, f=f: one(f, c))(offsets) for k, f in losses.items()}  # [C, 2]
        out["z"] = gan.sample_latent(key, n, 1)[:, 0]
        return out

    return jax.tree.map(np.asarray, run(jnp.asarray(SWEEP_OFFSETS)))


def _chain_rule(kind: str, z: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    g = G_SCALE * z + G_BIAS
    d = 1.0 / (1.0 + np.exp(-DISC_SLOPE * (g - c)))
    dl = -d if kind == "minimax" else -(1.0 - d)
    return np.array([np.mean(dl * DISC_SLOPE * z), np.mean(dl * DISC_SLOPE)]), float(np.mean(d))


def _plot_generator_gradients(sweeps: dict):
    def plot(path):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for kind, (mean_d, norms) in sweeps.items():
            order = np.argsort(mean_d)
            ax.loglog(mean_d[order], norms[order], "o-" if kind == "minimax" else "s-",
                      label="saturating log(1 - D(G(z)))" if kind == "minimax" else "non-saturating -log D(G(z))")
        ax.set_xlabel("mean D(G(z))")
        ax.set_ylabel(r"$\|\nabla_\theta L_G\|$")
        ax.set_title("Generator gradient as the discriminator wins")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    return plot


@float64
def check_generator_gradient(kind: str, seed: int = 0, n: int = 4096) -> Check:
    """Gradient of the library's generator loss w.r.t. G's parameters == the chain rule, in the
    saturated regime D(G(z)) ~ 1e-5 (a confident linear discriminator l(x) = a (x - c)).

    With dL/dl = -D (minimax) or -(1 - D) (non-saturating), dl/dG = a and dG/d(w, b) = (z, 1):
    grad_w = mean(dL/dl a z), grad_b = mean(dL/dl a). The non-saturating record's figure shows both
    gradient norms as the discriminator's offset c grows (D(G(z)) -> 0).
    """
    res = _generator_gradients(seed, n)
    z = res["z"]  # the z that g_loss_fn draws from `key`
    sweeps = {k: (np.array([_chain_rule(k, z, c)[1] for c in SWEEP_OFFSETS]), np.hypot(*res[k].T))
              for k in ("minimax", "non_saturating")}
    lhs = res[kind][-1]
    rhs, mean_d = _chain_rule(kind, z, SATURATED_OFFSET)
    label = "saturating (minimax)" if kind == "minimax" else "non-saturating"
    return compare(
        FAMILY, f"generator_gradient_{kind}",
        f"The {label} generator gradient through G is the chain rule with dL/dl = "
        + ("-D" if kind == "minimax" else "-(1 - D)"),
        r"\nabla_\theta L_G = \mathbb{E}_z\!\left[\frac{\partial L_G}{\partial l}\, a\, \nabla_\theta "
        r"G_\theta(z)\right]"
        + (r",\ \ \frac{\partial L_G}{\partial l} = -D" if kind == "minimax"
           else r",\ \ \frac{\partial L_G}{\partial l} = -(1 - D)"),
        lhs, rhs, 1e-9 * np.abs(rhs) + 1e-15,
        lhs_how=f"jax.grad w.r.t. the generator's params of gan.GAN(loss='{kind}').g_loss, "
                f"{n} z, discriminator l(x) = {DISC_SLOPE:g} (x - {SATURATED_OFFSET:g})",
        rhs_how="chain rule in numpy on the same z",
        note=f"Mean D(G(z)) = {mean_d:.1e}: the gradient norm is {float(np.hypot(*rhs)):.2e}. "
             "Relative tolerance 1e-9 (float64).",
        plot=_plot_generator_gradients(sweeps) if kind == "non_saturating" else None)


# ------------------------------------------------------------------------------------------ run
def checks(fast: bool) -> list[Callable[[], Check | Sequence[Check]]]:
    """Every GAN check, as thunks; ``fast`` shrinks the Monte Carlo sample and the training run."""
    return [
        check_value_at_optimum,
        functools.partial(check_value_function_mc, 0, n=200_000 if fast else 2_000_000),
        check_stationarity,
        check_maximiser,
        functools.partial(check_trained_discriminator, 1, num_steps=1000 if fast else 4000,
                          batch_size=256 if fast else 512),
        functools.partial(check_logit_gradient, "minimax"),
        functools.partial(check_logit_gradient, "non_saturating"),
        functools.partial(check_generator_gradient, "minimax"),
        functools.partial(check_generator_gradient, "non_saturating"),
    ]
