"""Evaluators: one interface, chosen by name in ``config.eval.evaluators`` (in the style of big_vision's).

An evaluator is built from ``(config, context)`` and called once per seed::

    evaluator = EVALUATORS[name](config.eval, ctx)
    metrics = evaluator(params_of_one_seed, key, samples_of_that_seed)   # {name: float}

It reads held-out data from ``ctx.batches()``. If it scores samples, ``evaluator.num_samples > 0`` and
the runner draws them once for all seeds and all such evaluators (``ctx.sample(key, n)``, the largest
``n`` asked for). :func:`evaluate` runs the named evaluators on every seed and summarises seeds as
``<metric>`` (the mean), ``<metric>_std`` and ``<metric>_min``, with ``num_seeds``.

* ``nll`` (:mod:`.likelihood`): exact held-out NLL of models with ``nll`` (flows).
* ``importance_nll`` (:mod:`.likelihood`): VAEs' importance-sampled ``log p(x)`` and the test ELBO.
* ``ode_nll`` (:mod:`.likelihood`): the probability-flow ODE's log-likelihood (diffusion: DDPM and VDM; flow
  matching).
* ``bound`` (:mod:`.bound`): diffusion's variational bound and held-out loss.
* ``modes`` (:mod:`.samples`): mode coverage of toy mixtures.
* ``frechet`` (:mod:`.samples`): Frechet distance of samples to held-out data (toy: in the plane;
  images: in a small classifier's feature space).
* ``inception`` (:mod:`.inception`): FID, Inception Score and KID on the FID Inception-v3 (weights supplied
  by the user), comparable with papers.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from experiments.evaluators.bound import DiffusionBound
from experiments.evaluators.inception import InceptionMetrics
from experiments.evaluators.likelihood import ExactNLL, ImportanceSampledNLL, ODELikelihood
from experiments.evaluators.samples import FrechetDistance, ModeCoverage
from experiments.tasks.base import Context

EVALUATORS: dict[str, Callable[[Any, Context], Any]] = {
    "nll": ExactNLL,
    "importance_nll": ImportanceSampledNLL,
    "ode_nll": ODELikelihood,
    "bound": DiffusionBound,
    "modes": ModeCoverage,
    "frechet": FrechetDistance,
    "inception": InceptionMetrics,
}


def build(names, options, ctx: Context) -> list:
    """The evaluators named by ``names`` (``config.eval.evaluators``), checked against the registry."""
    unknown = [n for n in names if n not in EVALUATORS]
    if unknown:
        raise ValueError(f"config.eval.evaluators has {unknown}; expected names among {sorted(EVALUATORS)}")
    return [EVALUATORS[n](options, ctx) for n in names]


def summarise(per_seed: list[dict]) -> dict:
    """One seed: its metrics; K seeds: ``<k>`` (mean), ``<k>_std``, ``<k>_min`` and ``num_seeds``."""
    if len(per_seed) == 1:
        return dict(per_seed[0])
    out = {}
    for k in per_seed[0]:
        v = np.asarray([s[k] for s in per_seed], np.float64)
        out.update({k: float(v.mean()), f"{k}_std": float(v.std()), f"{k}_min": float(v.min())})
    out["num_seeds"] = float(len(per_seed))
    return out


def evaluate(evaluators: list, ctx: Context, key: jax.Array) -> dict[str, float]:
    """Runs ``evaluators`` on every seed of ``ctx`` with ``key`` and summarises the seeds."""
    n = max([e.num_samples for e in evaluators] + [0])
    samples = ctx.sample(key, n) if n else None  # [K, n, ...]: one draw for every seed and evaluator
    per_seed = []
    for s, params in enumerate(ctx.params):
        out: dict[str, float] = {}
        for e in evaluators:
            out.update(e(params, key, None if samples is None else samples[s][:e.num_samples]))
        per_seed.append({k: float(v) for k, v in out.items()})
    return summarise(per_seed)
