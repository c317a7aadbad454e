"""Scores of samples: mode coverage of toy mixtures (``modes``) and the Frechet distance to held-out data
(``frechet``)."""

from __future__ import annotations

import os

import jax
import numpy as np

from experiments.tasks.base import Context
from gen_jax.metrics import classifier as clf
from gen_jax.metrics import frechet_distance_from_features, inception_score, kernel_inception_distance, mode_coverage


class ModeCoverage:
    """Toy mixtures (PacGAN/VEEGAN protocol): ``modes`` captured, ``hq_percent`` of samples within 3 std of
    a mode, ``kl_to_uniform`` of the mode histogram, ``num_modes``; on ``eval.num_samples`` samples per
    seed. Distributions without isotropic modes (checkerboard, moons, ...) give nothing."""

    def __init__(self, options, ctx: Context):
        if ctx.data.kind != "toy":
            raise ValueError(f"the modes evaluator scores toy mixtures; data {ctx.data.name!r} are {ctx.data.kind}")
        self.dist = ctx.data.toy
        self.scored = getattr(self.dist, "std", None) is not None and getattr(self.dist, "means", None) is not None
        self.num_samples = int(options.num_samples) if self.scored else 0

    def __call__(self, params, key, samples) -> dict:
        if not self.scored:
            return {}
        return mode_coverage(samples, self.dist.means, self.dist.std)


class FrechetDistance:
    """The Frechet distance between samples and the held-out data. Toy and points: ``frechet_<D>d`` in the data space
    (``eval.num_samples`` samples). Images: ``frechet_distance`` in the feature space of a small classifier
    trained on the training split (:mod:`gen_jax.metrics.classifier`; ``eval.classifier_steps``,
    ``classifier_batch_size``, ``classifier_seed``; ``classifier_path`` caches it across runs and is
    refused if trained on another dataset), on ``eval.fd_num_samples`` samples; also the classifier's test
    accuracy, its "inception score" ``classifier_score = exp E_x KL(p(y|x) || p(y))``, the KID formula in its
    features ``kernel_distance`` (and its std over 100 subsets of up to 1000; :mod:`gen_jax.metrics.kernel`), the
    number of ``classes_covered`` (>= 1% of the samples) and ``frechet_distance_test_halves`` (the test set against
    half of itself: a floor for the distance)."""

    def __init__(self, options, ctx: Context):
        self.ctx, self.options = ctx, options
        self.is_image = ctx.data.kind == "image"
        if self.is_image and ctx.data.num_classes < 2:
            raise ValueError(f"the frechet evaluator on images trains a classifier for its features and needs "
                             f"labelled images; {ctx.data.name!r} has no labels")
        self.num_samples = int(options.fd_num_samples if self.is_image else options.num_samples)
        self._params, self._test = None, None
        path = options.get("classifier_path", None) if self.is_image else None
        if path and os.path.exists(path):  # checked now, before training: refused if of another dataset
            self._params = clf.load_classifier(path, dataset=ctx.data.name, num_classes=ctx.data.num_classes,
                                               image_shape=ctx.data.shape)

    def _held_out(self):
        xs, ys = [], []
        for b in self.ctx.batches():
            xs.append(np.asarray(b["x"]))
            ys.append(np.asarray(b.get("label", np.zeros(len(b["x"]), np.int32))))
        return np.concatenate(xs), np.concatenate(ys)

    def __call__(self, params, key, samples) -> dict:
        if not self.is_image:
            held_out, _ = self._held_out()
            fd = frechet_distance_from_features(samples, held_out) if np.all(np.isfinite(samples)) else float("inf")
            return {f"frechet_{self.ctx.data.shape[0]}d": fd}
        cls_params = self._classifier()
        if self._test is None:
            x_test, y_test = self._held_out()
            self._test = (clf.features(cls_params, x_test), clf.accuracy(cls_params, x_test, y_test))
        test_features, accuracy = self._test
        n = len(samples)
        logits = clf.logits(cls_params, samples)
        features = clf.features(cls_params, samples)
        kid, kid_std = kernel_inception_distance(features, test_features, num_subsets=100, subset_size=1000)
        out = {"frechet_distance": frechet_distance_from_features(features, test_features),
               "kernel_distance": kid, "kernel_distance_std": kid_std,
               "classifier_score": inception_score(logits, num_splits=1, from_logits=True)[0],
               "classes_covered": float(np.sum(np.bincount(np.argmax(logits, 1), minlength=logits.shape[1])
                                               >= 0.01 * n)),
               "classifier_test_accuracy": accuracy}
        half = len(test_features) // 2
        if half >= 2:
            out["frechet_distance_test_halves"] = frechet_distance_from_features(test_features[:half],
                                                                                 test_features[half:])
        return out

    def _classifier(self):
        if self._params is None:
            ev, data = self.options, self.ctx.data
            train = data.train.read_all()
            x_train, y_train = train["x"], train["label"]
            self._params = clf.train_classifier(x_train, y_train, key=jax.random.key(int(ev.get("classifier_seed", 0))),
                                                num_classes=data.num_classes, num_steps=int(ev.classifier_steps),
                                                batch_size=int(ev.classifier_batch_size))
            path = ev.get("classifier_path", None)
            if path:
                clf.save_classifier(path, self._params, dataset=data.name, steps=int(ev.classifier_steps),
                                    seed=int(ev.get("classifier_seed", 0)))
        return self._params
