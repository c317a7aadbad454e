"""Mixed precision as one policy for every family: networks compute in a low-precision dtype, everything
else stays float32.

``Policy('bfloat16')`` (config ``train.precision``) means:

* parameters and optimizer state are float32 (the master copy; the optimizer never sees bfloat16);
* a family's *networks* (denoisers, VAE encoders/decoders, GAN generators/discriminators, flow
  conditioners) run in bfloat16: their float parameters and their data input are cast on entry, so every
  convolution, matmul and activation inside is bfloat16; their outputs are cast back to float32 on exit;
* everything a family computes from those outputs is float32: log-dets and log-likelihoods, KL terms, the
  diffusion bound, the loss; and inside the networks, normalisation statistics and softmaxes are reduced in
  float32 (``gen_jax.nn.GroupNorm``, the U-Net's attention). Conditioning inputs other than the data
  (diffusion times, labels) enter as they are, so a time embedding is computed in float32 before it meets
  the bfloat16 activations.

The gradient flows through the casts to the float32 parameters. ``Policy('float32')`` (the default) adds no
operation at all: results are bit-identical to code without a policy.

``Policy('float16')`` is the same with float16 networks, plus **dynamic loss scaling** (Micikevicius et al.
2018), since float16's range (6e-8 .. 65504) loses small gradients to underflow: the train step differentiates
``loss x scale``, divides the gradients by ``scale`` (a power of two: exact), and a :class:`DynamicLossScale` in
the train state halves ``scale`` after an update whose gradients overflowed (the update itself is skipped, as
every non-finite update is) and doubles it after ``period`` finite updates in a row.

A family applies its networks with :meth:`Policy.apply` (a top-level ``module.apply``: denoisers, GANs),
:meth:`Policy.call` (a submodule called from a parent's method: the VAE's encoder and decoder) or
:meth:`Policy.network` (a network built inside another Flax module: a flow's coupling conditioners).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

PyTree = Any
PRECISIONS = ("float32", "bfloat16", "float16")


def _cast_floating(tree: PyTree, dtype) -> PyTree:
    def cast(x):
        if isinstance(x, (jax.Array, jnp.ndarray)) and jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype:
            return x.astype(dtype)
        return x

    return jax.tree.map(cast, tree)


@dataclasses.dataclass(frozen=True)
class Policy:
    """The compute dtype of a family's networks (see the module docstring).

    Attributes:
      compute: ``'float32'``, ``'bfloat16'`` or ``'float16'`` (float16 trains with a dynamic loss scale,
        :meth:`loss_scale`; bfloat16 has float32's range and needs none).
    """

    compute: str = "float32"

    def __post_init__(self):
        if self.compute not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.compute!r}")

    @property
    def dtype(self):
        return jnp.dtype(self.compute)

    @property
    def is_full(self) -> bool:
        """float32: the policy changes nothing."""
        return self.compute == "float32"

    def loss_scale(self) -> "DynamicLossScale | None":
        """The loss scale a train state starts with under this policy: a :class:`DynamicLossScale` for
        float16, ``None`` (no scaling) for float32 and bfloat16."""
        return DynamicLossScale.create() if self.compute == "float16" else None

    def cast_to_compute(self, tree: PyTree) -> PyTree:
        """Floating arrays of ``tree`` -> the compute dtype (others unchanged)."""
        return tree if self.is_full else _cast_floating(tree, self.dtype)

    def cast_to_float32(self, tree: PyTree) -> PyTree:
        """Floating arrays of ``tree`` -> float32 (others unchanged)."""
        return tree if self.is_full else _cast_floating(tree, jnp.float32)

    def apply(self, module: nn.Module, variables: PyTree, x: Any, *args, **kwargs) -> Any:
        """``module.apply(variables, x, *args, **kwargs)`` with the ``'params'`` collection and the data ``x``
        in the compute dtype and the outputs (and any mutated collections) in float32. ``args`` and
        ``kwargs`` (times, labels, flags, rngs) are passed as they are."""
        if self.is_full:
            return module.apply(variables, x, *args, **kwargs)
        variables = dict(variables)
        variables["params"] = self.cast_to_compute(variables["params"])
        return self.cast_to_float32(module.apply(variables, self.cast_to_compute(x), *args, **kwargs))

    def call(self, module: nn.Module, fn, x: Any, *args) -> Any:
        """``fn(module, x, *args)`` from a method of the bound Flax ``module`` (e.g. ``lambda m, x: m.encoder(x)``),
        with the parameters ``fn`` reads (stored float32) and the data ``x`` in the compute dtype, and the outputs
        in float32 (``nn.map_variables``: the parameter tree is the same as without a policy)."""
        if self.is_full:
            return fn(module, x, *args)
        return self.cast_to_float32(_params_in(fn, self.compute)(module, self.cast_to_compute(x), *args))

    def network(self, cls: type[nn.Module], *args, **kwargs):
        """``cls(*args, **kwargs)``, built inside another Flax module's compact method, computing in the compute
        dtype: its parameters are created and stored in float32 under the same name and shapes as without a
        policy (checkpoints carry over), read in the compute dtype; its data input is cast on entry and its
        output to float32 on exit. Returns the module (float32) or a function of its inputs."""
        if self.is_full:
            return cls(*args, **kwargs)
        module = _in_dtype(cls, self.compute)(*args, **kwargs)
        return lambda x, *a, **k: self.cast_to_float32(module(self.cast_to_compute(x), *a, **k))


class DynamicLossScale(flax.struct.PyTreeNode):
    """Dynamic loss scaling for float16 compute (Micikevicius et al. 2018, "Mixed precision training").

    A train step differentiates :meth:`scale_loss` of its loss, passes the gradients through :meth:`unscale`,
    and stores :meth:`adjust` of whether they were finite (:mod:`gen_jax.train` does all three when the state
    has a ``loss_scale``). The scale halves after a non-finite update (never below ``min_scale``) and doubles
    after ``period`` finite updates in a row (never above ``max_scale``, apex's 2^24: beyond it float16 would
    need gradients below its smallest subnormal); it is a power of two, so scaling and unscaling are exact.

    Attributes:
      scale: float32 scalar, the current scale.
      good_steps: int32 scalar, finite updates since the scale last changed.
      overflows: int32 scalar, updates skipped (non-finite) while the scale was above ``min_scale``: the
        scale finding its level, which a divergence check should not count (``TrainState.nonfinite_total``
        does not).
      period: finite updates in a row before the scale doubles (static).
      min_scale, max_scale: the least and the largest scale (static).
    """

    scale: jax.Array
    good_steps: jax.Array
    overflows: jax.Array
    period: int = flax.struct.field(pytree_node=False, default=2000)
    min_scale: float = flax.struct.field(pytree_node=False, default=1.0)
    max_scale: float = flax.struct.field(pytree_node=False, default=2.0**24)

    @classmethod
    def create(cls, initial: float = 2.0**15, period: int = 2000, min_scale: float = 1.0,
               max_scale: float = 2.0**24) -> "DynamicLossScale":
        """A scale of ``initial``; the defaults as PyTorch's GradScaler and jmp's (2^15 .. 2^16, 2000 steps)."""
        scales = {"min_scale": min_scale, "initial": initial, "max_scale": max_scale}
        if not (0 < min_scale <= initial <= max_scale
                and all(math.log2(v).is_integer() for v in scales.values())):
            raise ValueError(f"the scales must be powers of two with 0 < min_scale <= initial <= max_scale, "
                             f"got {scales}")
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period!r}")
        return cls(scale=jnp.asarray(initial, jnp.float32), good_steps=jnp.zeros((), jnp.int32),
                   overflows=jnp.zeros((), jnp.int32), period=int(period), min_scale=float(min_scale),
                   max_scale=float(max_scale))

    def scale_loss(self, loss: jax.Array) -> jax.Array:
        return loss * self.scale.astype(loss.dtype)

    def unscale(self, grads: PyTree) -> PyTree:
        inverse = 1.0 / self.scale
        return jax.tree.map(lambda g: g * inverse.astype(g.dtype), grads)

    def adjust(self, finite: jax.Array) -> "DynamicLossScale":
        """The scale after an update whose gradients were (``finite``) or were not finite."""
        grow = finite & (self.good_steps + 1 >= self.period)
        scale = jnp.where(finite, jnp.where(grow, jnp.minimum(2.0 * self.scale, self.max_scale), self.scale),
                          jnp.maximum(0.5 * self.scale, self.min_scale))
        overflow = ~finite & (self.scale > self.min_scale)
        return self.replace(scale=scale, good_steps=jnp.where(finite & ~grow, self.good_steps + 1, 0),
                            overflows=self.overflows + overflow.astype(jnp.int32))


def _params_in(target, compute: str):
    """``target`` (a Module class or a function of a bound module) with the ``'params'`` it reads in ``compute``
    and those it creates stored in float32 (``nn.map_variables``)."""
    dtype = jnp.dtype(compute)
    return nn.map_variables(target, "params", trans_in_fn=lambda t: _cast_floating(t, dtype),
                            trans_out_fn=lambda t: _cast_floating(t, jnp.float32), init=True, mutable=True)


@functools.lru_cache(maxsize=None)
def _in_dtype(cls: type[nn.Module], compute: str) -> type[nn.Module]:
    """:func:`_params_in` of ``cls`` under ``cls``'s own name, so Flax names its instances as it names ``cls``'s."""
    mapped = _params_in(cls, compute)
    mapped.__name__, mapped.__qualname__ = cls.__name__, cls.__qualname__
    return mapped


def matmul_flops_by_dtype(fn, *args, **kwargs) -> dict[str, float]:
    """FLOPs of the matmuls and convolutions ``fn(*args, **kwargs)`` traces, by operand dtype (e.g.
    ``{'bfloat16': 9.8e9, 'float32': 2.1e6}``): what a policy actually moved to low precision. Counts
    ``2 x output elements x contraction size`` per ``dot_general`` / ``conv_general_dilated``, through nested
    jaxprs (jit, custom derivatives, remat; a scan's body times its length)."""
    from jax.extend import core as jex_core

    totals: dict[str, float] = {}

    def visit(jaxpr, times: float) -> None:
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name in ("dot_general", "conv_general_dilated"):
                lhs, rhs = (v.aval for v in eqn.invars[:2])
                out = eqn.outvars[0].aval
                if name == "dot_general":
                    (contract, _), _ = eqn.params["dimension_numbers"]
                    size = math.prod(lhs.shape[d] for d in contract)
                else:
                    out_features = rhs.shape[eqn.params["dimension_numbers"].rhs_spec[0]]
                    size = math.prod(rhs.shape) // out_features
                key = str(lhs.dtype)
                totals[key] = totals.get(key, 0.0) + times * 2.0 * math.prod(out.shape) * size
            inner = times * (eqn.params.get("length", 1) if name == "scan" else 1)
            for p in eqn.params.values():
                for sub in (p if isinstance(p, (tuple, list)) else (p,)):
                    if isinstance(sub, jex_core.ClosedJaxpr):
                        visit(sub.jaxpr, inner)
                    elif isinstance(sub, jex_core.Jaxpr):
                        visit(sub, inner)

    visit(jax.make_jaxpr(functools.partial(fn, **kwargs))(*args).jaxpr, 1.0)
    return totals
