"""Diffusion's held-out loss and variational bound (``bound``)."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np

from experiments.tasks.base import Context
from gen_jax import metrics


def kl_by_decade(terms: np.ndarray) -> dict[str, float]:
    """Sums of the KL terms L_{t-1}, t >= 2, of a per-timestep bound ``terms`` [T] (entry t - 1 is
    the term at timestep t) over decades of t: {'kl_t2_10': t = 2..10, 'kl_t11_100': t = 11..100, ...}.
    Shows where the bits of ``diffusion`` (their total) go."""
    T = len(terms)
    out, lo, hi = {}, 2, 10
    while lo <= T:
        out[f"kl_t{lo}_{min(hi, T)}"] = float(np.sum(terms[lo - 1:min(hi, T)]))
        lo, hi = hi + 1, hi * 10
    return out


class DiffusionBound:
    """The held-out training objective ``loss`` (L_simple with the defaults; one random t per example,
    dropout off) over all eval batches and, on their first ``eval.bound_examples`` examples, the full
    variational bound (all T terms): ``nll_nats`` (an upper bound on -log p(x)), for images
    ``bits_per_dim`` and its parts ``prior_bpd`` (L_T), ``decoder_bpd`` (L_0), ``diffusion_bpd``
    (L_1..L_{T-1}), the latter split by decades of t (``kl_t2_10_bpd``, ...; toy data: all in nats), and
    the standard error of the bound over the examples (``bits_per_dim_se``; toy: ``nll_nats_se``). The
    key splits into the loss's and the bound's. Options: ``bound_examples`` (0 skips the bound),
    ``bound_batch_size``, and ``bound_<name>`` for each keyword ``name`` of the model's ``bound``: DDPM's
    ``bound_t_chunk`` (timesteps per network call) and ``bound_variance`` ('large' as in Ho et al.'s
    reported bounds, or 'small'), costing T network evaluations per example; a continuous-time model's
    ``bound_num_times`` (times t per example; no per-decade split)."""

    num_samples = 0

    def __init__(self, options, ctx: Context):
        self.ctx, model = ctx, ctx.model
        self.bound_examples = int(options.get("bound_examples", 0))
        self.bound_bs = int(options.get("bound_batch_size", 100))
        self._loss = jax.jit(lambda params, batch, key: model.objective(params, batch, key, train=False)[0])
        # the model's bound options from config.eval: ``bound_<name>`` for each keyword ``name`` it takes
        accepted = inspect.signature(model.bound).parameters
        bound_kwargs = {name: options[f"bound_{name}"] for name in accepted
                        if name not in ("params", "x", "key", "label") and f"bound_{name}" in options}

        @jax.jit
        def bound_sums(params, x, label, valid, key):
            out = model.bound(params, x, key, label=label, **bound_kwargs)
            keys = ("nll_nats", "bits_per_dim", "prior_nats", "decoder_nats", "diffusion_nats")
            sums = {k: jnp.sum(jnp.where(valid, out[k], 0.0)) for k in keys}
            if "terms_nats" in out:  # per-timestep terms of a discrete-time bound [T]
                sums["terms_nats"] = jnp.sum(jnp.where(valid[:, None], out["terms_nats"], 0.0), axis=0)
            sums["nll_sq"] = jnp.sum(jnp.where(valid, jnp.square(out["nll_nats"]), 0.0))
            return sums

        self._bound_sums = bound_sums

    def __call__(self, params, key, samples=None) -> dict:
        loss_key, bound_key = jax.random.split(key)
        loss_sum, count = 0.0, 0
        held: list[dict] = []  # the first `bound_examples` examples, for the bound
        held_n = 0
        for i, batch in enumerate(self.ctx.batches()):
            b = {k: jnp.asarray(v) for k, v in batch.items() if k in ("x", "label")}
            n = int(b["x"].shape[0])
            loss_sum += float(self._loss(params, b, jax.random.fold_in(loss_key, i))) * n
            count += n
            if held_n < self.bound_examples:
                take = min(n, self.bound_examples - held_n)
                held.append({k: np.asarray(v)[:take] for k, v in batch.items() if k in ("x", "label")})
                held_n += take
        if not count:
            raise ValueError("the bound evaluator received no evaluation batches.")
        result = {"loss": loss_sum / count}
        if held_n:
            result.update(self._bound(params, held, held_n, bound_key))
        return result

    def _bound(self, params, held: list[dict], n: int, key: jax.Array) -> dict:
        conditional = self.ctx.model.num_classes is not None
        x = np.concatenate([h["x"] for h in held])
        labels = np.concatenate([h["label"] for h in held]) if conditional else None
        bs = min(self.bound_bs, n)
        pad = (-n) % bs
        x = np.concatenate([x, np.repeat(x[:1], pad, 0)])
        if labels is not None:
            labels = np.concatenate([labels, np.repeat(labels[:1], pad, 0)])
        valid = np.arange(len(x)) < n
        sums: dict = {}
        for j in range(len(x) // bs):
            sl = slice(j * bs, (j + 1) * bs)
            out = self._bound_sums(params, jnp.asarray(x[sl]), None if labels is None else jnp.asarray(labels[sl]),
                                   jnp.asarray(valid[sl]), jax.random.fold_in(key, j))
            for k, v in jax.device_get(out).items():
                sums[k] = sums.get(k, 0.0) + np.asarray(v, np.float64)
        mean = {k: v / n for k, v in sums.items()}
        res = {"nll_nats": float(mean["nll_nats"]), "bound_examples": float(n)}
        se = float(metrics.standard_error(sums["nll_nats"], sums["nll_sq"], n)) if n > 1 else None
        parts = {"prior": mean["prior_nats"], "decoder": mean["decoder_nats"], "diffusion": mean["diffusion_nats"]}
        if "terms_nats" in mean:
            parts.update(kl_by_decade(mean["terms_nats"]))
        if self.ctx.data.kind == "image":
            to_bpd = 1.0 / (float(np.prod(self.ctx.data.shape)) * np.log(2.0))
            res["bits_per_dim"] = float(mean["bits_per_dim"])
            if se is not None:
                res["bits_per_dim_se"] = se * to_bpd
            res.update({f"{k}_bpd": float(v) * to_bpd for k, v in parts.items()})
        else:
            if se is not None:
                res["nll_nats_se"] = se
            res.update({f"{k}_nats": float(v) for k, v in parts.items()})
        return res
