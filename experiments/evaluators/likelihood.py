"""Held-out log-likelihood: exact for flows (``nll``), importance-sampled for VAEs (``importance_nll``)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from experiments.configs.common import ODE_TOLERANCE
from experiments.tasks.base import Context
from gen_jax import metrics, vae


def _per_dim(nll_nats: float, shape) -> float:
    return nll_nats / (float(np.prod(shape)) * np.log(2.0))


class ExactNLL:
    """``nll_nats``: the mean of ``model.nll`` over the held-out batches (batch ``i`` with key
    ``fold_in(key, i)``, which dequantizes 8-bit images: a bound on the discrete NLL); images also
    ``bits_per_dim``; ``num_examples``."""

    num_samples = 0

    def __init__(self, options, ctx: Context):
        self.ctx = ctx
        self._sum = jax.jit(lambda params, x, key: jnp.sum(ctx.model.nll(params, x, key)))

    def __call__(self, params, key, samples=None) -> dict:
        total, count = 0.0, 0
        for i, batch in enumerate(self.ctx.batches()):
            x = jnp.asarray(batch["x"])
            total += float(np.asarray(jax.device_get(self._sum(params, x, jax.random.fold_in(key, i))), np.float64))
            count += x.shape[0]
        if not count:
            raise ValueError("the nll evaluator received no evaluation batches.")
        out = {"nll_nats": total / count}
        if self.ctx.data.kind == "image":
            out["bits_per_dim"] = _per_dim(out["nll_nats"], self.ctx.data.shape)
        out["num_examples"] = float(count)
        return out


class ImportanceSampledNLL:
    """A VAE's test ``nll_nats = -log p(x)`` by importance sampling with K = ``eval.iwae_k`` samples (and
    ``nll_nats_se``, its standard error over the test examples), the test ELBO terms (``elbo_nats``,
    ``recon_nats``, ``kl``; ``eval.elbo_samples`` samples), images ``bits_per_dim``.

    Test images are binarised once with ``eval.binarize_seed``. The K samples of each batch run as one device
    call per chunk of ``eval.chunk_size`` samples (and per ``eval.rows_per_call`` images, 0: the whole
    batch), each waited for, so that a long evaluation shows progress and stops promptly on SIGTERM; the
    estimate is the same as one whole-batch call (the same draws, up to float summation order).
    """

    num_samples = 0

    def __init__(self, options, ctx: Context):
        self.ctx = ctx
        self.iwae_k, chunk = int(options.iwae_k), int(options.chunk_size)
        self.rows_per_call = int(options.get("rows_per_call", 0))
        if self.rows_per_call < 0:
            raise ValueError(f"config.eval.rows_per_call={self.rows_per_call}; expected 0 (the whole eval batch) "
                             f"or a positive number of images per call.")
        self.num_chunks = vae.num_importance_chunks(self.iwae_k, chunk)
        model: vae.VariationalAutoencoder = ctx.model
        elbo_samples = int(options.get("elbo_samples", 1))
        binarize_key = jax.random.key(int(options.get("binarize_seed", 0)))
        net, lik, iwae_k = model.vae, model.likelihood, self.iwae_k

        @jax.jit
        def prepare(params, x_raw, key, batch_index):
            """A test batch's binarisation, posterior, IS key and ELBO sums (everything but the IS chunks)."""
            x = model.preprocess(x_raw, jax.random.fold_in(binarize_key, batch_index))
            is_key, elbo_key = jax.random.split(key)
            mean, log_var = net.apply({"params": params}, x, method="encode")
            terms = vae.elbo(vae.decoder_log_likelihood(net, params, lik, x), mean, log_var, elbo_key,
                             num_samples=elbo_samples, kl=model.kl)
            return x, mean, log_var, is_key, {"elbo": jnp.sum(terms.elbo), "recon": jnp.sum(terms.recon),
                                              "kl": jnp.sum(terms.kl)}

        @functools.cache
        def chunk_fn(n):
            @jax.jit
            def one_chunk(params, x, mean, log_var, is_key, c, start):
                """One chunk of the IS estimate for rows start:start + n of the batch."""
                xr = jax.lax.dynamic_slice_in_dim(x, start, n)
                return vae.importance_chunk_logsumexp(vae.decoder_log_likelihood(net, params, lik, xr), mean, log_var,
                                                      is_key, c, num_samples=iwae_k, chunk_size=chunk, rows=(start, n))
            return one_chunk

        @jax.jit
        def log_px_sums(per_chunk):
            log_px = vae.combine_importance_chunks(per_chunk, iwae_k)  # [B]
            return {"log_px": jnp.sum(log_px, axis=-1), "log_px_sq": jnp.sum(jnp.square(log_px), axis=-1)}

        self._prepare, self._chunk, self._sums = prepare, chunk_fn, log_px_sums

    def _batch_sums(self, params, batch, key, i) -> dict:
        from tqdm.auto import tqdm

        b = len(batch["x"])
        x, mean, log_var, is_key, sums = self._prepare(params, jnp.asarray(batch["x"]), jax.random.fold_in(key, i), i)
        step = self.rows_per_call if 0 < self.rows_per_call < b else b
        blocks = [(start, min(step, b - start)) for start in range(0, b, step)]
        per_chunk = []
        with tqdm(total=self.num_chunks * len(blocks), desc=f"eval batch {i}: log p(x), K={self.iwae_k}",
                  unit="call", leave=False, disable=None) as bar:
            for c in range(self.num_chunks):
                parts = []
                for start, n in blocks:
                    parts.append(jax.block_until_ready(self._chunk(n)(params, x, mean, log_var, is_key, c, start)))
                    bar.update()
                per_chunk.append(jnp.concatenate(parts, axis=-1))
        return jax.device_get({**sums, **self._sums(jnp.stack(per_chunk))})

    def __call__(self, params, key, samples=None) -> dict:
        totals, count = {}, 0
        for i, batch in enumerate(self.ctx.batches()):
            for k, v in self._batch_sums(params, batch, key, i).items():
                totals[k] = totals.get(k, 0.0) + np.asarray(v, np.float64)
            count += len(batch["x"])
        if not count:
            raise ValueError("the importance_nll evaluator received no evaluation batches.")
        m = {k: float(v / count) for k, v in totals.items()}
        out = {"nll_nats": -m["log_px"], "elbo_nats": m["elbo"], "recon_nats": -m["recon"], "kl": m["kl"]}
        if self.ctx.data.kind == "image":
            out["bits_per_dim"] = _per_dim(out["nll_nats"], self.ctx.data.shape)
        if count > 1:  # standard error of the mean NLL over the test examples (sampling of the test set)
            out["nll_nats_se"] = float(metrics.standard_error(totals["log_px"], totals["log_px_sq"], count))
        out.update(iwae_k=float(self.iwae_k), num_examples=float(count))
        return out


class ODELikelihood:
    """The exact log-likelihood of a model's probability-flow ODE (:func:`gen_jax.diffusion.ode_log_likelihood`;
    diffusion (DDPM, VDM) and flow-matching models) on the first ``eval.ode_examples`` held-out examples:
    ``ode_nll_nats`` and its standard error over the examples; 8-bit images are uniformly dequantised
    (an upper bound on the discrete NLL) and also give ``ode_bits_per_dim``. Options: ``ode_examples``,
    ``ode_batch_size``, ``ode_divergence`` ('exact', or Hutchinson's 'rademacher' / 'gaussian'; default exact
    for vectors, rademacher for images), ``ode_rtol``/``ode_atol`` (default ``ODE_TOLERANCE``, 1e-5), and the
    mean number of accepted solver steps ``ode_solver_steps``."""

    num_samples = 0

    def __init__(self, options, ctx: Context):
        from gen_jax import diffusion

        if not hasattr(ctx.model, "probability_flow"):
            raise ValueError(f"the ode_nll evaluator needs a model with a probability-flow ODE (diffusion or flow "
                             f"matching); {type(ctx.model).__name__} has none")
        self.ctx, self.is_image = ctx, ctx.data.kind == "image"
        self.examples, self.batch_size = int(options.get("ode_examples", 100)), int(options.get("ode_batch_size", 100))
        kind = options.get("ode_divergence", None) or ("rademacher" if self.is_image else "exact")
        solver = dict(divergence_kind=kind, rtol=float(options.get("ode_rtol", ODE_TOLERANCE)),
                      atol=float(options.get("ode_atol", ODE_TOLERANCE)))
        if self.is_image:
            self._fn = lambda params, x, key: diffusion.dequantized_bits_per_dim(  # noqa: E731
                ctx.model.probability_flow(params), x, key, **solver)
        else:
            self._fn = lambda params, x, key: diffusion.ode_log_likelihood(  # noqa: E731
                ctx.model.probability_flow(params), x, key, **solver)

    def __call__(self, params, key, samples=None) -> dict:
        nll, steps, taken = [], [], 0
        for i, batch in enumerate(self.ctx.batches()):
            if taken >= self.examples:
                break
            x = np.asarray(batch["x"])[:self.examples - taken]
            for j in range(0, len(x), self.batch_size):
                out = self._fn(params, jnp.asarray(x[j:j + self.batch_size]), jax.random.fold_in(key, i * 10_000 + j))
                nll.append(np.asarray(out["nll_nats"] if self.is_image else -out["log_prob"], np.float64))
                steps.append(float(out["num_steps"]))
            taken += len(x)
        if not nll:
            raise ValueError("the ode_nll evaluator received no evaluation batches.")
        nll = np.concatenate(nll)
        se = float(nll.std(ddof=1) / np.sqrt(len(nll))) if len(nll) > 1 else float("nan")
        out = {"ode_nll_nats": float(nll.mean()), "ode_nll_nats_se": se, "ode_examples": float(len(nll)),
               "ode_solver_steps": float(np.mean(steps))}
        if self.is_image:
            out["ode_bits_per_dim"] = _per_dim(out["ode_nll_nats"], self.ctx.data.shape)
            out["ode_bits_per_dim_se"] = _per_dim(se, self.ctx.data.shape)
        return out
