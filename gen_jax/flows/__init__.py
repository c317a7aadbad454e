"""Normalizing flows: log p_model(x) = log p_z(f(x)) + log|det df(x)/dx|, f: data -> latent.

Every layer is a bijector with ``forward(x) -> (z, log_det [B])`` and
``inverse(z) -> (x, log_det [B])`` and an explicit, analytic log-determinant.
"""

from gen_jax.flows.bijectors import (
    ActNorm,
    AdditiveCoupling,
    Affine,
    AffineCoupling,
    Bijector,
    Chain,
    Invertible1x1Conv,
    Logit,
    MaskedAutoregressive,
    MultiScaleFlow,
    Permute,
    SplineCoupling,
    Squeeze,
    checkerboard,
    made_masks,
    rational_quadratic_spline,
    sum_except_batch,
)
from gen_jax.flows.conditioners import MLP, ConvNet
from gen_jax.flows.losses import (
    bits_per_dim,
    dequantize,
    discrete_nll_nats,
    flow_nll,
    make_flow_loss,
)
from gen_jax.flows.models import (
    MAF,
    NSF,
    FlowModel,
    Glow,
    MultiScaleRealNVP,
    RealNVP,
    standard_normal_log_prob,
)

__all__ = [
    # bijectors
    "Bijector", "Chain", "Affine", "Logit", "Permute", "Squeeze", "ActNorm", "Invertible1x1Conv",
    "AffineCoupling", "AdditiveCoupling", "SplineCoupling", "MaskedAutoregressive", "MultiScaleFlow",
    "rational_quadratic_spline", "made_masks", "checkerboard", "sum_except_batch",
    # conditioners
    "MLP", "ConvNet",
    # models
    "FlowModel", "RealNVP", "NSF", "MAF", "MultiScaleRealNVP", "Glow", "standard_normal_log_prob",
    # objective
    "dequantize", "discrete_nll_nats", "bits_per_dim", "flow_nll", "make_flow_loss",
]
