"""Single layers of the kinds the MNIST conv configs are made of (forward, and forward + gradient):
which convolution kinds XLA runs near the matmul peak on this device."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from experiments.benchmark.hlo import flops_of
from experiments.benchmark.suites import Suite
from experiments.benchmark.timing import MatmulProbe, time_calls

# (name, layer, input [H, W, C]) of the convolutions the MNIST conv configs are made of, and the
# gen_jax.nn layers that represent the strided and transposed ones exactly (sub-pixel, space-to-depth)
KERNELS = (
    ("conv 3x3 s1 64->64 @14x14 (U-Net/Glow body)", ("conv", 64, 3, 1), (14, 14, 64)),
    ("conv 3x3 s2 32->64 @14x14 (VAE encoder)", ("conv", 64, 3, 2), (14, 14, 32)),
    ("  space-to-depth alternative: pad + s2d + conv 2x2 4x32->64", ("s2d", 64, 3, 2), (14, 14, 32)),
    ("conv-transpose 3x3 s2 64->32 @14x14 (VAE decoder)", ("convT", 32, 3, 2), (14, 14, 64)),
    ("  sub-pixel alternative: conv 3x3 64->4x32 + depth-to-space", ("subpixel", 32, 3, 2), (14, 14, 64)),
    ("conv 4x4 s2 64->128 @14x14 (DCGAN D)", ("conv", 128, 4, 2), (14, 14, 64)),
    ("  space-to-depth alternative: pad + s2d + conv 2x2 4x64->128", ("s2d", 128, 4, 2), (14, 14, 64)),
    ("conv-transpose 4x4 s2 128->64 @7x7 (DCGAN G)", ("convT", 64, 4, 2), (7, 7, 128)),
    ("  sub-pixel alternative: conv 3x3 128->4x64 + depth-to-space", ("subpixel", 64, 3, 2), (7, 7, 128)),
    ("dense 3136->512 (reference matmul)", ("dense", 512, 0, 0), (3136,)),
)


def make_layer(kind: str, features: int, k: int, stride: int):
    """The Flax layer of one ``KERNELS`` row."""
    import flax.linen as nn

    from gen_jax.nn import Downsample2x, Upsample2x

    if kind == "conv":
        return nn.Conv(features, (k, k), strides=(stride, stride), padding="SAME")
    if kind == "convT":
        return nn.ConvTranspose(features, (k, k), strides=(stride, stride), padding="SAME")
    if kind == "subpixel":
        return Upsample2x(features, "subpixel")
    if kind == "s2d":
        return Downsample2x(features, "space_to_depth", kernel=k)
    if kind == "dense":
        return nn.Dense(features)
    raise ValueError(f"unknown layer kind {kind!r}; expected conv, convT, subpixel, s2d or dense")


def measure_kernels(suite: Suite, batch: int) -> list[dict]:
    """Throughput of single layers (forward, and forward + gradient w.r.t. input and weights) as a
    fraction of the interleaved matmul's: which convolution kinds XLA runs near peak on this device."""
    records = []
    for name, (kind, features, k, stride), shape in KERNELS:
        layer = make_layer(kind, features, k, stride)
        x = jax.random.normal(jax.random.key(0), (batch, *shape), jnp.float32)
        params = layer.init(jax.random.key(1), x)

        def loss(p, x, layer=layer):
            return jnp.sum(jnp.square(layer.apply(p, x)))

        for mode, fn in (("forward", jax.jit(layer.apply)), ("forward+backward", jax.jit(jax.grad(loss, (0, 1))))):
            flops = flops_of(fn.lower(params, x).compile().cost_analysis())
            probe = MatmulProbe(suite.matmul_n)
            _, t = time_calls(lambda key, fn=fn, params=params, x=x: fn(params, x), budget_s=2.0, probe=probe)
            rec = {"kind": "kernel", "family": "-", "config": "-", "kernel": name, "mode": mode, "batch": batch,
                   "median_s": t, "flops": flops}
            if flops:
                rec.update(gflops_per_s=flops / t / 1e9, peak_fraction=flops / t / probe.flops_per_s)
            records.append(rec)
    return records
