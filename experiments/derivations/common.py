"""The record every check returns, the comparison rules, and shared numerical helpers.

A check compares a *library side* (computed with gen_jax's own functions) with an *independent side*
(a closed form, quadrature, Monte Carlo with a stated standard error, or autodiff) and returns one
:class:`Check`. Three relations are used:

* ``'=='``: ``abs_error = |lhs - rhs|``; passes when ``abs_error <= tolerance``.
* ``'>='`` / ``'<='``: ``abs_error`` is the amount by which the inequality ``lhs >= rhs`` (resp.
  ``lhs <= rhs``) is violated, 0 when it holds; passes when ``abs_error <= tolerance``.

For a comparison over many elements the record shows the element that is worst relative to its own
tolerance (its ``lhs``, ``rhs``, ``abs_error`` and ``tolerance``; for an inequality, the element with
the smallest slack); it passes only if every element does.
Non-finite values never pass.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

RELATIONS = ("==", ">=", "<=")

# Two-sided normal quantile used for Monte Carlo tolerances: |estimate - truth| <= Z * SE fails by
# chance with probability ~6e-5 for one comparison (a few hundred comparisons in a full report).
Z = 4.0


@dataclasses.dataclass(frozen=True)
class Check:
    """One numerically checked identity of a derivation.

    Attributes:
      family: 'gan', 'vae', 'flow' or 'diffusion'.
      name: short identifier, unique within the family.
      title: one line in words.
      formula: the identity in LaTeX (no surrounding ``$$``).
      lhs: the library side (gen_jax's own functions).
      rhs: the independent side.
      abs_error: see the module docstring (per relation).
      tolerance: the allowed ``abs_error``; ``note`` says where it comes from.
      passed: whether ``abs_error <= tolerance`` (and everything is finite).
      relation: '==', '>=' or '<='.
      lhs_how: how the library side was computed (which gen_jax functions).
      rhs_how: how the independent side was computed.
      note: the tolerance's origin and anything else a reader needs.
      figure: file name of the figure (set by the report writer), or None.
      plot: ``plot(path)`` draws this check's figure into ``path`` (PNG); not serialised.
    """

    family: str
    name: str
    title: str
    formula: str
    lhs: float
    rhs: float
    abs_error: float
    tolerance: float
    passed: bool
    relation: str = "=="
    lhs_how: str = ""
    rhs_how: str = ""
    note: str = ""
    figure: str | None = None
    plot: Callable[[str], None] | None = dataclasses.field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The JSON record (non-finite numbers become ``None``)."""

        def num(v):
            return float(v) if math.isfinite(v) else None

        return {
            "family": self.family, "name": self.name, "title": self.title, "formula": self.formula,
            "lhs": num(self.lhs), "rhs": num(self.rhs), "abs_error": num(self.abs_error),
            "tolerance": num(self.tolerance), "passed": bool(self.passed), "relation": self.relation,
            "lhs_how": self.lhs_how, "rhs_how": self.rhs_how, "note": self.note, "figure": self.figure,
        }


def _violation(lhs: np.ndarray, rhs: np.ndarray, relation: str) -> np.ndarray:
    if relation == "==":
        return np.abs(lhs - rhs)
    if relation == ">=":
        return np.maximum(rhs - lhs, 0.0)
    if relation == "<=":
        return np.maximum(lhs - rhs, 0.0)
    raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")


def compare(family: str, name: str, title: str, formula: str, lhs: Any, rhs: Any, tolerance: Any, *,
            relation: str = "==", lhs_how: str = "", rhs_how: str = "", note: str = "",
            plot: Callable[[str], None] | None = None) -> Check:
    """Builds a :class:`Check` from two sides of any (broadcast-compatible) shape.

    Args:
      lhs: library side, scalar or array.
      rhs: independent side, broadcastable against ``lhs``.
      tolerance: allowed error, scalar or per element (broadcastable).
      relation: '==', '>=' or '<=' (see the module docstring).

    Returns:
      The record of the element that is worst relative to its tolerance.
    """
    lhs_a = np.asarray(lhs, np.float64)
    rhs_a = np.asarray(rhs, np.float64)
    tol_a = np.asarray(tolerance, np.float64)
    lhs_a, rhs_a, tol_a = np.broadcast_arrays(lhs_a, rhs_a, tol_a)
    if lhs_a.size == 0:
        raise ValueError(f"check {family}/{name} compares empty arrays")
    err = _violation(lhs_a, rhs_a, relation)
    finite = np.isfinite(lhs_a) & np.isfinite(rhs_a) & np.isfinite(tol_a)
    if relation == "==":
        badness = err / np.maximum(tol_a, 1e-300)
    else:  # the smallest slack relative to the tolerance (most negative = worst violation)
        slack = lhs_a - rhs_a if relation == ">=" else rhs_a - lhs_a
        badness = -slack / np.maximum(tol_a, 1e-300)
    badness = np.where(finite, badness, np.inf)
    i = int(np.argmax(badness.reshape(-1)))
    flat = lambda a: float(a.reshape(-1)[i])  # noqa: E731
    passed = bool(np.all(finite) and np.all(err <= tol_a))
    return Check(family=family, name=name, title=title, formula=formula, lhs=flat(lhs_a),
                 rhs=flat(rhs_a), abs_error=flat(err), tolerance=flat(tol_a), passed=passed,
                 relation=relation, lhs_how=lhs_how, rhs_how=rhs_how, note=note, plot=plot)


# XLA's CPU backend spends most of a small program's compile time in LLVM optimisation; the checks
# are compile-bound (many small programs, each run once), so they compile without it.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def jit(fun: Callable, *, optimize: bool = False, **kwargs) -> Callable:
    """``jax.jit`` with :data:`COMPILER_OPTIONS` (library functions called inside are inlined).

    ``optimize=True`` keeps XLA's full optimisation, for the few programs whose run time (long
    loops, millions of random numbers) outweighs their compile time.
    """
    return jax.jit(fun, compiler_options=None if optimize else COMPILER_OPTIONS, **kwargs)


def float64(check: Callable) -> Callable:
    """Runs ``check`` inside ``jax.enable_x64(True)``, so every check is float64 however it is called."""

    @functools.wraps(check)
    def wrapper(*args, **kwargs):
        with jax.enable_x64(True):
            return check(*args, **kwargs)

    return wrapper


def to_f64(tree: Any) -> Any:
    """Casts every floating leaf of a pytree to float64 (call inside ``jax.enable_x64(True)``)."""

    def cast(a):
        a = jnp.asarray(a)
        return a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a

    return jax.tree.map(cast, tree)


def gauss_legendre(lo: float, hi: float, panels: int, order: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss-Legendre rule on [lo, hi]: ``panels`` equal panels of ``order`` nodes each.

    Exact for polynomials of degree ``2 * order - 1`` on each panel; for the smooth, rapidly decaying
    integrands used here the error is at the level of float64 round-off.

    Returns:
      (nodes [panels * order], weights [panels * order]), float64.
    """
    x, w = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(lo, hi, panels + 1)
    half = 0.5 * np.diff(edges)
    mid = 0.5 * (edges[1:] + edges[:-1])
    nodes = (mid[:, None] + half[:, None] * x[None, :]).reshape(-1)
    weights = (half[:, None] * w[None, :]).reshape(-1)
    return nodes, weights


def normal_logpdf(x: np.ndarray, mean: np.ndarray | float, var: np.ndarray | float) -> np.ndarray:
    """Elementwise log N(x; mean, var), numpy float64 (the independent side's own Gaussian)."""
    x = np.asarray(x, np.float64)
    return -0.5 * (np.log(2.0 * np.pi * var) + (x - mean) ** 2 / var)


def mean_and_se(samples: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean and its standard error ``std / sqrt(n)`` along ``axis``."""
    samples = np.asarray(samples, np.float64)
    n = samples.shape[axis]
    return samples.mean(axis=axis), samples.std(axis=axis, ddof=1) / math.sqrt(n)


def kolmogorov_critical(n: int, alpha: float = 1e-3) -> float:
    """Asymptotic critical value of the one-sample KS statistic: P(D_n > c) ~= alpha.

    Uses P(sqrt(n) D_n > t) ~= 2 exp(-2 t^2) (the leading term of Kolmogorov's series), i.e.
    c = sqrt(log(2 / alpha) / 2) / sqrt(n).
    """
    return math.sqrt(math.log(2.0 / alpha) / 2.0) / math.sqrt(n)


def ks_statistic(samples: np.ndarray, cdf: Callable[[np.ndarray], np.ndarray]) -> float:
    """One-sample Kolmogorov-Smirnov statistic sup_x |F_n(x) - F(x)|."""
    x = np.sort(np.asarray(samples, np.float64))
    n = x.shape[0]
    f = cdf(x)
    up = np.arange(1, n + 1) / n - f
    down = f - np.arange(0, n) / n
    return float(max(up.max(), down.max()))


def ks_two_sample(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup_x |F_a(x) - F_b(x)|."""
    a = np.sort(np.asarray(a, np.float64))
    b = np.sort(np.asarray(b, np.float64))
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / a.shape[0]
    fb = np.searchsorted(b, grid, side="right") / b.shape[0]
    return float(np.max(np.abs(fa - fb)))
