"""FID, Inception Score and KID of image samples on the FID Inception-v3 (``inception``): the numbers papers
report, computed as pytorch-fid / TTUR compute them (:mod:`gen_jax.metrics.inception`).

Samples are quantised to 8 bits first (as when they are written to PNG files for pytorch-fid). The reference
set is the ``eval.inception_reference`` split (``'train'``, as CIFAR-10 FIDs are usually reported, or
``'test'``); its statistics (mean and covariance of the pool3 features, and up to 10,000 of the features for
KID) are computed once and cached under ``eval.inception_stats_dir`` (the run's ``<workdir>/inception_stats``
unless given: share one folder between runs to compute them once), in a file named by what they depend on —
the dataset's content hash, the split, and the weights' hash — so a cache of other data or weights is never
read.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from experiments.tasks.base import Context
from gen_jax.metrics import feature_statistics, frechet_distance, inception_score, kernel_inception_distance
from gen_jax.metrics import inception as inc

KID_REFERENCE = 10_000  # reference features kept for KID (a random subset when the split is larger)
REFERENCES = ("train", "test")


def quantise(samples: np.ndarray) -> np.ndarray:
    """Images in ``[0, 1]`` -> uint8, rounded as a PNG writer rounds them."""
    return np.clip(np.round(np.asarray(samples, np.float32) * 255.0), 0, 255).astype(np.uint8)


class InceptionMetrics:
    """``fid``, ``inception_score`` (10 splits, and its ``_std``), ``kid`` (100 subsets of up to 1000, and its
    ``_std``) on ``eval.inception_num_samples`` samples, with ``eval.inception_weights`` (the converted ``.npz``;
    checked when the run starts, so a missing file stops it before training)."""

    def __init__(self, options, ctx: Context):
        if ctx.data.kind != "image":
            raise ValueError(f"the inception evaluator scores images; data {ctx.data.name!r} are {ctx.data.kind}")
        self.ctx, self.options = ctx, options
        self.reference = str(options.get("inception_reference", "train"))
        if self.reference not in REFERENCES:
            raise ValueError(f"eval.inception_reference must be one of {REFERENCES}, got {self.reference!r}")
        if self.reference == "train" and ctx.data.train is None:
            raise ValueError("eval.inception_reference='train' needs read data; use 'test'")
        self.num_samples = int(options.get("inception_num_samples", 50_000))
        if self.num_samples < 2:
            raise ValueError(f"eval.inception_num_samples must be >= 2, got {self.num_samples}")
        self.weights_path = options.get("inception_weights", None)
        variables = inc.load_weights(self.weights_path)
        self.features = inc.InceptionFeatures(variables, batch_size=int(options.get("inception_batch_size", 200)))
        self.stats_dir = options.get("inception_stats_dir", None)
        self._reference = None

    def _cache_file(self) -> tuple[str | None, dict]:
        fingerprint = (self.ctx.data.fingerprint or {}).get(self.reference)
        meta = {"dataset": self.ctx.data.name, "split": self.reference, "data": fingerprint,
                "weights_sha256": inc.file_digest(self.weights_path), "kid_reference": KID_REFERENCE}
        if not self.stats_dir or fingerprint is None:  # nothing to name the data by: computed every time
            return None, meta
        digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
        safe = "".join(c if c.isalnum() else "_" for c in self.ctx.data.name)
        return os.path.join(self.stats_dir, f"{safe}_{self.reference}_{digest}.npz"), meta

    def _reference_images(self):
        if self.reference == "test":
            return (np.asarray(b["x"]) for b in self.ctx.batches())
        train, chunk = self.ctx.data.train, 2000
        return (train.read(np.arange(s, min(len(train), s + chunk)))["x"] for s in range(0, len(train), chunk))

    def reference_statistics(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(mu [2048], sigma [2048, 2048], kid_features [<= 10000, 2048])`` of the reference split."""
        if self._reference is not None:
            return self._reference
        path, meta = self._cache_file()
        if path and os.path.exists(path):
            try:
                with np.load(path) as f:
                    if json.loads(str(f["meta"])) == meta:
                        self._reference = (f["mu"], f["sigma"], f["kid_features"])
                        return self._reference
            except Exception as e:  # noqa: BLE001 -- a damaged cache is recomputed, not fatal
                print(f"inception: ignoring the unreadable cache {path} ({type(e).__name__}); recomputing", flush=True)
        pool, _ = self.features(self._reference_images())
        mu, sigma = feature_statistics(pool)
        keep = np.sort(np.random.default_rng(0).permutation(len(pool))[:KID_REFERENCE])
        self._reference = (mu, sigma, pool[keep])
        if path:
            inc.write_npz(path, mu=mu, sigma=sigma, kid_features=pool[keep], meta=json.dumps(meta, sort_keys=True))
        return self._reference

    def __call__(self, params, key, samples) -> dict:
        mu_ref, sigma_ref, kid_ref = self.reference_statistics()
        images = quantise(samples)
        pool, logits = self.features(images)
        if not np.all(np.isfinite(pool)):
            return {"fid": float("inf")}
        mu, sigma = feature_statistics(pool)
        score, score_std = inception_score(logits, num_splits=min(10, len(pool)), from_logits=True)
        kid, kid_std = kernel_inception_distance(pool, kid_ref, num_subsets=100, subset_size=1000)
        return {"fid": frechet_distance(mu, sigma, mu_ref, sigma_ref), "inception_score": score,
                "inception_score_std": score_std, "kid": kid, "kid_std": kid_std}
