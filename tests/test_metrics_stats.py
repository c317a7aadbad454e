"""gen_jax.metrics.standard_error: the standard error of a mean from batch-accumulated sums."""

import numpy as np
import pytest

from gen_jax.metrics import standard_error


def test_standard_error_equals_numpy_over_batches():
    """Accumulating sum and sum of squares over uneven batches gives std(ddof=1) / sqrt(n), also for
    values with a large mean (where a naive float32 accumulation would lose the variance)."""
    x = np.random.default_rng(0).normal(1000.0, 3.0, size=1001)
    total = total_sq = 0.0
    for chunk in np.array_split(x, 7):
        total += chunk.sum()
        total_sq += np.square(chunk).sum()
    np.testing.assert_allclose(standard_error(total, total_sq, len(x)), x.std(ddof=1) / np.sqrt(len(x)),
                               rtol=1e-6)


def test_standard_error_elementwise_and_edge_cases():
    x = np.array([[1.0, 2.0, 4.0], [5.0, 5.0, 5.0]])  # two "seeds", three values each
    se = standard_error(x.sum(1), np.square(x).sum(1), 3)
    np.testing.assert_allclose(se, [x[0].std(ddof=1) / np.sqrt(3), 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        standard_error(1.0, 1.0, 1)
