"""What XLA says about a compiled step: FLOPs (cost analysis), buffer memory, while loops that hold
matmuls, its HLO instructions by kind, and where a step's time goes (``jax.profiler``, per op)."""

from __future__ import annotations

import os
import re
import tempfile
import time
from typing import Any, Callable

import jax

OP_KINDS = ("convolution", "matmul", "layout (copy/transpose)", "reduction", "element-wise / other")


def flops_of(cost: Any) -> float | None:
    """FLOPs of XLA's cost analysis (a dict, or a list of one dict per program), else None."""
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def memory_of(compiled) -> dict[str, int]:
    """XLA's buffer assignment of a compiled program, in bytes ({} where the backend has none)."""
    try:
        m = compiled.memory_analysis()
    except (NotImplementedError, jax.errors.JaxRuntimeError):  # a backend without memory analysis
        return {}
    if m is None:
        return {}
    out = {"argument_bytes": int(m.argument_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
           "temp_bytes": int(m.temp_size_in_bytes), "alias_bytes": int(m.alias_size_in_bytes)}
    out["xla_total_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    return out


def hlo_computations(hlo_text: str) -> dict[str, str]:
    """``{computation name: its text}`` of an HLO module."""
    blocks = re.split(r"\n(?=(?:ENTRY )?%[\w.\-]+ )", hlo_text)
    return {m.group(1): b for b in blocks if (m := re.match(r"(?:ENTRY )?%([\w.\-]+) ", b))}


def loops_with_matmuls(hlo_text: str) -> int:
    """Number of while loops in an HLO module whose body (transitively) holds a dot or convolution.

    XLA's cost analysis counts a while body once whatever its trip count, so with such loops (e.g. a
    ``lax.scan`` over D updates) the reported FLOPs are a lower bound. PRNG loops (threefry) carry no
    dot and do not count.
    """
    comps = hlo_computations(hlo_text)

    def has_matmul(name: str, seen: set) -> bool:
        if name in seen or name not in comps:
            return False
        seen.add(name)
        body = comps[name]
        if re.search(r"\b(dot|convolution)\(", body):
            return True
        return any(has_matmul(c, seen) for c in re.findall(r"(?:calls|to_apply|body|condition|branch_computations)="
                                                             r"\{?%([\w.\-]+)", body))

    return sum(has_matmul(b, set()) for b in re.findall(r"\bwhile\(.*?body=%([\w.\-]+)", hlo_text))


def hlo_instructions(hlo_text: str) -> dict[str, tuple[str, str, str]]:
    """``{instruction name: (opcode, source op_name from its metadata, body)}`` of a compiled HLO
    module; ``body`` is the text of the computation a fusion calls ('' for other instructions)."""
    comps = hlo_computations(hlo_text)
    out = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = .+? ([\w\-]+)\(", line)
        if m:
            meta = re.search(r'op_name="([^"]+)"', line)
            called = re.search(r"calls=%([\w.\-]+)", line)
            body = comps.get(called.group(1), "") if called and m.group(2) == "fusion" else ""
            out[m.group(1)] = (m.group(2), meta.group(1) if meta else "", body)
    return out


def fused_source(body: str) -> str:
    """The source op of the first convolution or dot inside a fusion's body, else ''."""
    m = re.search(r"(?:convolution|dot)\(.*?op_name=\"([^\"]+)\"", body)
    return m.group(1) if m else ""


def op_kind(name: str, opcode: str, source: str, body: str = "") -> str:
    """One of ``OP_KINDS`` for an HLO instruction: a fusion that contains a convolution (dot) counts as
    one; other fusions are classed by their JAX source op or by the kinds XLA names them after."""
    if opcode == "convolution" or source.endswith("conv_general_dilated") or re.search(r"\bconvolution\(", body):
        return "convolution"
    if opcode == "dot" or source.endswith("dot_general") or re.search(r"\bdot\(", body):
        return "matmul"
    if opcode in ("copy", "transpose") or "copy" in name or "transpose" in name:
        return "layout (copy/transpose)"
    if opcode == "reduce" or "reduce" in name or source.endswith(("reduce_sum", "reduce_max")):
        return "reduction"
    return "element-wise / other"


def profile_ops(step: Callable, state, batch, hlo_text: str, steps: int = 2, top: int = 8) -> tuple[Any, dict]:
    """Runs ``steps`` steps under ``jax.profiler`` and attributes the time to the step's HLO
    instructions (events named like an instruction of ``hlo_text``; device planes when there are any,
    else the host's XLA threads). Returns ``(state, {"ops": [...top ops...], "covered": fraction})``:
    each op with its time per step, share of the step, opcode and the source op it came from
    (``transpose(jvp(...))`` marks a backward pass)."""
    names = hlo_instructions(hlo_text)
    with tempfile.TemporaryDirectory(prefix="gen_jax_profile_") as trace_dir:
        jax.block_until_ready(state)
        with jax.profiler.trace(trace_dir):
            t0 = time.perf_counter()  # inside: the profiler's own start and stop are not the step's time
            for _ in range(steps):
                state, metrics = step(state, batch)
            jax.block_until_ready((state, metrics))
            wall = (time.perf_counter() - t0) / steps
        totals = _op_seconds(trace_dir, names, steps)
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    ops = [{"op": name, "opcode": names[name][0], "source": names[name][1] or fused_source(names[name][2]),
            "s_per_step": secs, "fraction": secs / wall} for name, secs in ranked[:top]]
    kinds: dict[str, float] = {}
    for name, secs in totals.items():
        kind = op_kind(name, *names[name])
        kinds[kind] = kinds.get(kind, 0.0) + secs / wall
    return state, {"ops": ops, "covered": sum(totals.values()) / wall, "profiled_step_s": wall,
                   "by_kind": dict(sorted(kinds.items(), key=lambda kv: -kv[1]))}


def _op_seconds(trace_dir: str, names: dict, steps: int) -> dict[str, float]:
    """Seconds per step of each traced event named like an HLO instruction of ``names`` (device
    planes when the trace has any, else all planes)."""
    from jax.profiler import ProfileData

    files = [os.path.join(d, f) for d, _, fs in os.walk(trace_dir) for f in fs if f.endswith(".xplane.pb")]
    totals: dict[str, float] = {}
    if not files:
        return totals
    planes = list(ProfileData.from_file(files[0]).planes)
    device = [pl for pl in planes if pl.name.startswith("/device:")]
    for plane in device or planes:
        for line in plane.lines:
            for ev in line.events:
                if ev.name in names:
                    totals[ev.name] = totals.get(ev.name, 0.0) + ev.duration_ns * 1e-9 / steps
    return totals
