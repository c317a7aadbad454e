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
      compute: ``'float32'``, ``'bfloat16'`` or ``'float16'`` (float16 has no loss scaling here: prefer
        bfloat16, which has float32's range).
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
