"""Summary statistics accumulated over evaluation batches."""

from __future__ import annotations

import numpy as np


def standard_error(total, total_sq, n: int):
    """Standard error of the mean of n values from their running sum and sum of squares.

    The sample variance uses n - 1 (ddof = 1), so the result is std(values, ddof=1) / sqrt(n): how far
    the mean of n test examples may sit from the mean over the population they were drawn from.
    Accumulate ``total`` and ``total_sq`` in float64 (float32 sums of squares lose the variance to
    cancellation). Works elementwise on arrays (e.g. one value per vmapped seed).

    Args:
      total: sum of the values.
      total_sq: sum of their squares.
      n: how many values (>= 2).
    """
    if n < 2:
        raise ValueError(f"a standard error needs at least 2 values; got n={n}")
    mean = np.asarray(total, np.float64) / n
    var = np.maximum(np.asarray(total_sq, np.float64) / n - np.square(mean), 0.0) * n / (n - 1)
    return np.sqrt(var / n)
