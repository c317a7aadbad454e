"""Normalizing flows: log p_model(x) = log p_z(f(x)) + log|det df(x)/dx|, f: data -> latent.

Every layer is a bijector with ``forward(x) -> (z, log_det [B])`` and
``inverse(z) -> (x, log_det [B])`` and an explicit, analytic log-determinant.
"""

from gen_jax.flows.autoregressive import (
    MaskedAutoregressive,
    made_masks,
)
from gen_jax.flows.bijectors import (
    ActNorm,
    Affine,
    Bijector,
    Chain,
    Invertible1x1Conv,
    Logit,
    MultiScaleFlow,
    Permute,
    Squeeze,
)
from gen_jax.flows.conditioners import MLP, ConvNet
from gen_jax.flows.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    SplineCoupling,
    checkerboard,
    rational_quadratic_spline,
)
from gen_jax.flows.losses import (
    bits_per_dim,
    discrete_nll_nats,
    flow_nll,
)
from gen_jax.flows.models import (
    MAF,
    NSF,
    FlowModel,
    Glow,
    MultiScaleRealNVP,
    RealNVP,
)
from gen_jax.flows.protocol import NormalizingFlow
from gen_jax.ops import standard_normal_log_prob, sum_except_batch

__all__ = [
    # bijectors
    "Bijector", "Chain", "Affine", "Logit", "Permute", "Squeeze", "ActNorm", "Invertible1x1Conv",
    "AffineCoupling", "AdditiveCoupling", "SplineCoupling", "MaskedAutoregressive", "MultiScaleFlow",
    "rational_quadratic_spline", "made_masks", "checkerboard", "sum_except_batch",
    # conditioners
    "MLP", "ConvNet",
    # models
    "FlowModel", "RealNVP", "NSF", "MAF", "MultiScaleRealNVP", "Glow", "standard_normal_log_prob",
    # the generative model (gen_jax.model protocol) and its objective
    "NormalizingFlow", "discrete_nll_nats", "bits_per_dim", "flow_nll",
]
