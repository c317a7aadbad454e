"""The peer layers section: every convolution, dense layer and group normalisation (with the activation fused into
it, if any) that a config's train step calls, each timed alone in gen_jax (the very flax module, compiled) and in
PyTorch eager (``Conv2d`` / ``Linear`` / ``GroupNorm`` + activation in NCHW), forward and forward + both gradients,
alternating in rounds within one run.

Summed over the calls, it splits a config's gap to its PyTorch twin (the 'peers' section) into the layers'
kernels and everything around them: if gen_jax's layers are as fast as PyTorch's but its step is slower, the
difference lies in the rest of the step (the other element-wise work, layout copies, the optimizer).
"""

from __future__ import annotations

import collections

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmark import tasks
from experiments.benchmark.peers import set_torch_threads
from experiments.benchmark.peers.section import timed_calls
from experiments.benchmark.suites import Entry, Suite, batch_for
from gen_jax.nn import GroupNorm

NORMS = (nn.GroupNorm, GroupNorm)  # flax's and gen_jax's
TORCH_ACTIVATIONS = {None: "Identity", "silu": "SiLU", "swish": "SiLU", "relu": "ReLU", "gelu": "GELU",
                     "tanh": "Tanh"}  # a norm's fused activation (by its function's name) -> torch.nn module

ROUNDS = 2  # rounds of (gen_jax, PyTorch) per layer; the faster round's median counts
STEPS = 8  # timed calls per round and mode


def record_layers(fn, *args) -> list[dict]:
    """The ``nn.Conv``, ``nn.Dense`` and group-norm modules that ``fn(*args)`` calls (traced abstractly by
    ``jax.eval_shape``, so nothing runs): one record per distinct (module settings, input shape) with its
    ``count`` of calls and ``module``, the module unbound (``clone(parent=None)``) so that it can be rebuilt
    alone. Calls inside ``jax.checkpoint`` / transforms count once per trace of the module."""
    calls: dict[tuple, dict] = {}
    counts: collections.Counter = collections.Counter()

    def interceptor(next_fun, call_args, kwargs, context):
        m = context.module
        if context.method_name == "__call__" and isinstance(m, (nn.Conv, nn.Dense, *NORMS)) and call_args:
            x = call_args[0]
            unbound = m.clone(parent=None, name=None)
            kind = "norm" if isinstance(m, NORMS) else "conv" if isinstance(m, nn.Conv) else "dense"
            features = int(getattr(m, "features", x.shape[-1]))
            key = (type(m).__name__, tuple(x.shape), str(x.dtype), features,
                   *(repr(getattr(m, a, None)) for a in ("use_bias", "kernel_size", "strides", "padding",
                                                         "feature_group_count", "input_dilation", "kernel_dilation",
                                                         "dtype", "param_dtype", "num_groups", "epsilon")),
                   activation_name(m))
            counts[key] += 1
            calls.setdefault(key, {"kind": kind, "module": unbound, "shape": tuple(int(d) for d in x.shape),
                                   "dtype": str(x.dtype), "features": features})
        return next_fun(*call_args, **kwargs)

    with nn.intercept_methods(interceptor):
        jax.eval_shape(fn, *args)
    return [dict(rec, count=counts[key], name=describe(rec)) for key, rec in calls.items()]


def activation_name(m) -> str | None:
    """The name of a group norm's fused activation (``None``: none, or not a norm)."""
    fn = getattr(m, "activation", None)
    return None if fn is None else getattr(fn, "__name__", repr(fn))


def describe(rec: dict) -> str:
    """'conv 3x3 s2 16->32 @128x28x28' (input batch x height x width) / 'dense 64->128 [128, 49]' /
    'group norm 8 + silu @128x28x28x16' of a :func:`record_layers` record."""
    m, shape = rec["module"], rec["shape"]
    if rec["kind"] == "norm":
        act = activation_name(m)
        return f"group norm {m.num_groups}{'' if act is None else ' + ' + act} @{'x'.join(map(str, shape))}"
    if rec["kind"] == "dense":
        return f"dense {shape[-1]}->{rec['features']} [{', '.join(map(str, shape[:-1]))}]"
    k = "x".join(map(str, m.kernel_size))
    s = _pair(m.strides)
    return (f"conv {k}{'' if s == (1, 1) else ' s' + str(s[0])} {shape[-1]}->{rec['features']} "
            f"@{'x'.join(map(str, shape[:-1]))}")


def _pair(v) -> tuple[int, int]:
    if v is None:
        return (1, 1)
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(a) for a in v)


def _torch_padding(m: nn.Conv, spatial: tuple[int, ...]) -> int | tuple[int, ...]:
    """PyTorch's symmetric padding giving flax's output size: ``'SAME'`` pads k - s in total (at least), split
    evenly by flax with the odd row / column at the end, here as ceil(total / 2) on both sides (one row or column
    more work where the total is odd); ``'VALID'`` none; symmetric explicit pairs as they are."""
    if m.padding == "VALID":
        return 0
    if m.padding == "SAME":
        return tuple(-(-max((-(-n // s) - 1) * s + k - n, 0) // 2)
                     for n, k, s in zip(spatial, m.kernel_size, _pair(m.strides)))
    pads = [(p, p) if isinstance(p, int) else tuple(p) for p in m.padding]
    if any(lo != hi for lo, hi in pads):
        raise NotImplementedError(f"asymmetric padding {m.padding!r}")
    return tuple(lo for lo, _ in pads)


def torch_layer(rec: dict):
    """The PyTorch module of a record and its input in NCHW (or [..., features] for dense layers); the norm's
    activation (:data:`TORCH_ACTIVATIONS`) follows it in a ``Sequential``."""
    import torch

    m, shape = rec["module"], rec["shape"]
    if rec["kind"] == "dense":
        return torch.nn.Linear(shape[-1], rec["features"], bias=m.use_bias), torch.randn(shape)
    if rec["kind"] == "norm":
        act = activation_name(m)
        if act not in TORCH_ACTIVATIONS or m.num_groups is None:
            raise NotImplementedError(f"no PyTorch mirror of {rec['name']}")
        layer = torch.nn.Sequential(torch.nn.GroupNorm(m.num_groups, shape[-1], eps=m.epsilon),
                                    getattr(torch.nn, TORCH_ACTIVATIONS[act])())
        return layer, torch.randn(shape[0], shape[-1], *shape[1:-1])
    if len(m.kernel_size) != 2 or _pair(m.kernel_dilation) != (1, 1) or _pair(m.input_dilation) != (1, 1):
        raise NotImplementedError(f"only 2-D undilated convolutions are mirrored: {rec['name']}")
    layer = torch.nn.Conv2d(shape[-1], rec["features"], tuple(m.kernel_size), stride=_pair(m.strides),
                            padding=_torch_padding(m, shape[1:3]), groups=m.feature_group_count, bias=m.use_bias)
    return layer, torch.randn(shape[0], shape[3], shape[1], shape[2])


def jax_layer_fns(rec: dict):
    """gen_jax's (forward, forward + gradients w.r.t. the parameters and the input) of a record, compiled."""
    m = rec["module"]
    x = jax.random.normal(jax.random.key(0), rec["shape"], rec["dtype"])
    params = m.init(jax.random.key(1), x)
    g = jax.random.normal(jax.random.key(2), jax.eval_shape(m.apply, params, x).shape, x.dtype)
    fwd = jax.jit(m.apply).lower(params, x).compile()
    grads = jax.jit(jax.grad(lambda p, x: jnp.vdot(m.apply(p, x), g), argnums=(0, 1))).lower(params, x).compile()
    return (lambda: jax.block_until_ready(fwd(params, x))), (lambda: jax.block_until_ready(grads(params, x)))


def torch_layer_fns(rec: dict):
    """PyTorch eager's (forward without autograd, forward + backward) of a record."""
    import torch

    layer, x = torch_layer(rec)
    x.requires_grad_(True)
    with torch.no_grad():
        g = torch.randn_like(layer(x))

    def fwd():
        with torch.no_grad():
            layer(x)

    def both():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(g)

    return fwd, both


def measure_layers(records: list[dict], rounds: int = ROUNDS, steps: int = STEPS, warmup: int = 2) -> list[dict]:
    """Each record's gen_jax and PyTorch forward / forward + backward times (ms, the faster round's median),
    frameworks alternating per round; a layer PyTorch cannot mirror gets ``torch_error``."""
    out = []
    for rec in records:
        row = {k: v for k, v in rec.items() if k != "module"}
        contenders = {"jax": jax_layer_fns(rec)}
        try:
            contenders["torch"] = torch_layer_fns(rec)
        except NotImplementedError as e:
            row["torch_error"] = str(e)
        for fns in contenders.values():
            for fn in fns:
                for _ in range(warmup):
                    fn()
        best: dict[str, float] = {}
        for _ in range(rounds):
            for label, (fwd, both) in contenders.items():
                for mode, fn in (("fwd", fwd), ("fwdbwd", both)):
                    ms = 1e3 * float(np.median(timed_calls(fn, 0, steps)))
                    best[f"{label}_{mode}_ms"] = min(ms, best.get(f"{label}_{mode}_ms", np.inf))
        row.update(best)
        out.append(row)
    return out


def measure_peer_layers(entry: Entry, suite: Suite, rounds: int = ROUNDS) -> dict:
    """The section's record for one config: its train step's layers (:func:`record_layers` on the step at the
    section's batch) timed by :func:`measure_layers`, and their sums over the calls by kind ('conv', 'dense',
    'norm') and in all (``sums``)."""
    import torch

    threads = set_torch_threads()
    batch_size = batch_for(entry, suite)
    task, data = tasks.load(entry.config, batch_size)
    state = tasks.abstract_state(task, jax.random.key(0))
    batch = jax.tree.map(jnp.asarray, tasks.example_batch(data, batch_size))
    layers = measure_layers(record_layers(tasks.train_step(task), state, batch), rounds=rounds,
                            steps=suite.section_steps)
    rec = {"kind": "peer_layers", "family": entry.family, "config": entry.name, "batch": batch_size,
           "peer": f"torch {torch.__version__}", "torch_threads": threads, "layers": layers, "sums": {}}
    for kind in ("conv", "dense", "norm", "all"):
        rows = [r for r in layers if kind in ("all", r["kind"])]
        mirrored = [r for r in rows if "torch_fwdbwd_ms" in r]
        if not rows:
            continue
        sums = {"calls": sum(r["count"] for r in rows), "distinct": len(rows),
                "mirrored_calls": sum(r["count"] for r in mirrored)}
        for key in ("jax_fwd_ms", "jax_fwdbwd_ms", "torch_fwd_ms", "torch_fwdbwd_ms"):
            sums[key] = float(sum(r["count"] * r[key] for r in rows if key in r))
        sums["ratio_fwdbwd"] = (sum(r["count"] * r["torch_fwdbwd_ms"] for r in mirrored)
                                / max(sum(r["count"] * r["jax_fwdbwd_ms"] for r in mirrored), 1e-12))
        rec["sums"][kind] = sums
    return rec
