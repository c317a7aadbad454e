"""Mode coverage (PacGAN protocol) on hand-built sample sets."""

import numpy as np
import pytest

from gen_jax.data import toy
from gen_jax.metrics import mode_coverage


def test_perfect_samples_cover_every_mode():
    g = toy.grid25()
    rng = np.random.default_rng(0)
    s = np.repeat(g.means, 100, 0) + 0.05 * rng.standard_normal((2500, 2))
    out = mode_coverage(s, g.means, 0.05)
    assert out["modes"] == 25 and out["hq_percent"] > 98 and out["kl_to_uniform"] < 0.01


def test_collapsed_and_off_mode_samples():
    g = toy.grid25()
    s = np.concatenate([np.tile(g.means[:1], (90, 1)), np.full((10, 2), 1.0)])  # 1 mode + 10 between modes
    out = mode_coverage(s, g.means, 0.05)
    assert out["modes"] == 1 and out["hq_percent"] == pytest.approx(90.0)
    assert out["kl_to_uniform"] == pytest.approx(np.log(25))


def test_nonfinite_samples_are_low_quality_and_shapes_checked():
    g = toy.ring8()
    s = np.concatenate([g.means, np.full((8, 2), np.nan)])
    out = mode_coverage(s, g.means, 0.02)
    assert out["modes"] == 8 and out["hq_percent"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="must agree"):
        mode_coverage(np.zeros((4, 3)), g.means, 0.02)
