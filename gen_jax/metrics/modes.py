"""Mode coverage of samples from a Gaussian mixture (the PacGAN/VEEGAN protocol), for any family."""

from __future__ import annotations

import numpy as np


def mode_coverage(samples, means, std: float, threshold: float = 3.0) -> dict[str, float]:
    """Scores samples against the modes of an isotropic Gaussian mixture.

    A sample is *high quality* if it lies within ``threshold * std`` of its nearest mode; a mode is
    *captured* if it is the nearest mode of at least one high-quality sample. ``kl_to_uniform`` is
    KL(h || U) between the histogram h of high-quality samples over modes and the uniform distribution
    over the K modes (0 for a perfectly balanced cover; log K when a single mode is hit).

    Args:
      samples: [N, D] samples.
      means: [K, D] mode centres.
      std: the standard deviation of each mode.

    Returns:
      ``{'modes': captured count, 'hq_percent': 100 * fraction high quality, 'kl_to_uniform': nats,
      'num_modes': K}``.
    """
    x = np.asarray(samples, np.float64)
    mu = np.asarray(means, np.float64)
    if x.ndim != 2 or mu.ndim != 2 or x.shape[1] != mu.shape[1]:
        raise ValueError(f"samples [N, D] and means [K, D] must agree, got {x.shape} and {mu.shape}")
    finite = np.all(np.isfinite(x), axis=1)
    d2 = np.sum((x[:, None, :] - mu[None]) ** 2, axis=-1)  # [N, K]
    nearest = np.argmin(np.where(np.isfinite(d2), d2, np.inf), axis=1)
    dist = np.sqrt(d2[np.arange(len(x)), nearest])
    hq = finite & (dist < threshold * std)
    counts = np.bincount(nearest[hq], minlength=len(mu))
    k = len(mu)
    if counts.sum() > 0:
        h = counts / counts.sum()
        nz = h > 0
        kl = float(np.sum(h[nz] * np.log(h[nz] * k)))
    else:
        kl = float(np.log(k))
    return {"modes": float(np.sum(counts > 0)), "hq_percent": 100.0 * float(hq.mean()),
            "kl_to_uniform": kl, "num_modes": float(k)}
