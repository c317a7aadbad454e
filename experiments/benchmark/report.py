"""The markdown report: ``benchmark.md`` (one table per section, from the run's records) and
``architectures.md`` (each model's parameters, module by module)."""

from __future__ import annotations

import math
from typing import Callable

from experiments.benchmark.hlo import OP_KINDS

Records = Callable[[str], list[dict]]  # kind -> the run's records of that kind


def _fmt(v, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return format(v, spec)
    return str(v)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _ms(v) -> str:
    return "-" if v is None else f"{1e3 * v:.3g}"


def _mb(v) -> str:
    return "-" if v is None else f"{v / 2**20:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"] + [
        "| " + " | ".join(r) + " |" for r in rows]


def _short_source(op_name: str, keep: int = 90) -> str:
    op_name = op_name.replace("jit(step)/", "").replace("jit(main)/", "")
    return op_name if len(op_name) <= keep else "..." + op_name[-keep:]


def _n_params(p: dict) -> str:
    return " + ".join(f"{k} {v / 1e6:.3g}M" if k != "params" else f"{v / 1e6:.3g}M"
                      for k, v in p.items() if k in ("params", "G", "D"))


def _timed(r: dict) -> str:
    """``median ± IQR`` in ms, or the worker's error."""
    return f"{_ms(r.get('median_s'))} ± {_ms(r.get('iqr_s'))}" if "median_s" in r else r.get("error", "-")


def render_markdown(result: dict) -> str:
    """The report's tables (environment, per-config, then one table per cross-config measurement)."""
    env, records = result["env"], result["records"]
    by = lambda kind: [r for r in records if r["kind"] == kind]  # noqa: E731
    lines = _header(env, result, by)
    for section in (_train_steps, _profile, _op_by_op, _vmap, _batch_scaling, _data_parallel, _donation, _input):
        lines += section(by)
    lines += _xla_flags(by, env)
    for section in (_kernels, _samplers, _peers, _peer_layers, _loop_check):
        lines += section(by)
    lines += _targets(result["targets"])
    lines += _skipped(by)
    lines += ["Timings come from a machine that may be shared: compare ratios within one run, not absolute "
              "numbers across runs.", ""]
    return "\n".join(lines)


def _header(env: dict, result: dict, by: Records) -> list[str]:
    lines = [f"# gen_jax benchmark — suite `{env['suite']}`", "",
             f"`{env['command']}` — {env['date_utc']}; jax {env['jax']} / jaxlib {env['jaxlib']} "
             f"(flax {env['flax']}, optax {env['optax']}, Python {env['python']}); backend {env['backend']} "
             f"({env['device_kind']}, {env['device_count']} device(s), {env['cpu_model']}, "
             f"{env['cpus_usable']} usable CPU cores, load avg {_fmt(env['load_avg_1min'])}); "
             f"XLA_FLAGS=`{env['XLA_FLAGS'] or '(unset)'}`; git {env['git_commit'][:10] or '?'}"
             f"{' + local changes' if env.get('git_dirty') else ''}.", ""]
    peaks = by("matmul_peak")
    if peaks:
        lines += [f"Matmul peak (f32 {peaks[0]['n']}^2 @ {peaks[0]['n']}^2, measured at start and end of the run; "
                  f"the larger is used): " + ", ".join(f"{p['gflops_per_s']:.1f} GFLOP/s" for p in peaks)
                  + f" -> **{result['peak_gflops_per_s']:.1f} GFLOP/s**."
                  + "".join(f" (bf16, for reference: {r['gflops_per_s']:.1f} GFLOP/s.)" for r in by("matmul_bf16")),
                  ""]
    return lines


def _train_steps(by: Records) -> list[str]:
    params = {r["config"]: r for r in by("params")}
    compiles = {r["config"]: r for r in by("compile")}
    loops = {r["config"]: r for r in by("loop_check")}
    rows = []
    for r in by("step"):
        c, lc = compiles.get(r["config"], {}), loops.get(r["config"], {})
        rows.append([r["family"], r["config"], r["size"], _n_params(params.get(r["config"], {})), str(r["batch"]),
                     _fmt(c.get("cold_total_s")), _fmt(c.get("warm_total_s")),
                     f"{_ms(r['median_s'])} ± {_ms(r['iqr_s'])}", _fmt(r["examples_per_s"], ".4g"),
                     (">= " if r.get("flops_lower_bound") else "") + _fmt(r["flops"] / 1e9 if r.get("flops") else None),
                     _fmt(r.get("gflops_per_s")),
                     _pct(r.get("peak_fraction")), _pct(r.get("peak_fraction_run")),
                     _mb(r.get("xla_total_bytes")), "ok" if lc.get("ok") else ("FAIL" if lc else "-")])
    for r in by("lowered"):
        rows.append([r["family"], r["config"], r["size"], _n_params(params.get(r["config"], {})), str(r["batch"]),
                     "not timed", "-", "-", "-",
                     _fmt(r["flops_hlo"] / 1e9 if r.get("flops_hlo") else None) + " (HLO)", "-", "-", "-", "-", "-"])
    if not rows:
        return []
    return ["## Train step per config", "",
            "compile = trace + lower + XLA compile of `task.train_step` (AOT API), cold and warm (persistent "
            "cache, after `jax.clear_caches()`); step = median ± IQR over timed steps, each synchronised; "
            "GFLOP/step from XLA's cost analysis of the compiled step (`>=`: a loop with matmuls is "
            "counted once, so a lower bound); % peak = achieved FLOP/s / the throughput of the f32 matmul "
            "timed in between the steps (same contention; `run` = of the run's best matmul); memory = XLA "
            "buffer assignment (args + outputs + temps - aliased); loop = `fit` under `log_compiles` + "
            "`transfer_guard('disallow')` with 0 traces/compiles and no per-step host sync.", "",
            *_table(["family", "config", "size", "params", "batch", "compile cold s", "compile warm s",
                     "step ms", "examples/s", "GFLOP/step", "GFLOP/s", "% peak", "% run peak", "mem MB", "loop"],
                    rows), ""]


def _profile(by: Records) -> list[str]:
    if not by("profile"):
        return []
    rows = []
    for r in by("profile"):
        for op in r["ops"][:5]:
            rows.append([r["config"], op["op"], op["opcode"], _short_source(op["source"]),
                         _ms(op["s_per_step"]), _pct(op["fraction"])])
        rows.append([r["config"], "(all ops)", "", "", _ms(r["profiled_step_s"]), _pct(r["covered"])])
    return ["## Where each step's time goes (top XLA ops, `jax.profiler`)", "",
            "Two steps traced after the timed ones; each op's time per step and share of the step "
            "(`covered` = all attributed op time / step time; ops can overlap on several threads). "
            "`source` is the op's JAX origin: `transpose(jvp(...))` is a backward pass.", "",
            *_table(["config", "op", "opcode", "source", "ms/step", "% of step"], rows),
            "", "Share of the step by kind of op (`op_kind`: a fusion holding a convolution or dot counts as one, "
            "others by their root op), summed over threads, so a row can exceed 100%; `not attributed` = "
            "1 - covered: step time no op event accounts for. On XLA CPU with Eigen convolutions (gen_jax's "
            "default, `configure_xla_cpu`) that is mostly the convolutions' own work, which runs outside "
            "the traced op events (their events last a few ms); in small steps, dispatch between ops:", "",
            *_table(["config", *OP_KINDS, "not attributed"],
                    [[r["config"], *(_pct(r.get("by_kind", {}).get(k)) for k in OP_KINDS),
                      _pct(max(0.0, 1.0 - r["covered"]))] for r in by("profile")]), ""]


def _op_by_op(by: Records) -> list[str]:
    if not by("op_by_op"):
        return []
    return ["## jit vs op-by-op (`jax.disable_jit()`)", "",
            *_table(["config", "batch", "jit ms", "op-by-op ms", "jit speedup"],
                    [[r["config"], str(r["batch"]), _ms(r["jit_median_s"]), _ms(r["op_by_op_median_s"]),
                      f"{r['speedup']:.0f}x"] for r in by("op_by_op")]), ""]


def _vmap(by: Records) -> list[str]:
    if not by("vmap"):
        return []
    return ["## K seeds: one program vs K sequential runs", "",
            "method = config.replica_map, how the seeds share the program (gen_jax.train.map_replicas: vmap = "
            "each op batched over the seeds, unroll = the one-seed step K times; auto = unroll where the step "
            "convolves); speedup = K x (one seed's step time) / (K seeds' step time); % peak = achieved FLOP/s "
            "over the interleaved matmul's; ceiling = 1 / (one seed's fraction of peak): K seeds cost K "
            "times the FLOPs, so no program can beat it; batch K x B = the speedup of ONE seed trained at "
            "K times the batch (K x single ms / its step time): the same rows through one set of weights, "
            "the reference a K-seed program can hope to approach.", "",
            *_table(["config", "batch", "K", "method", "step ms (K seeds)", "K x single ms", "speedup",
                     "% peak", "ceiling", "batch K x B"],
                    [[r["config"], str(r["batch"]), str(r["seeds"]), r["method"], _ms(r["median_s"]),
                      _ms(r["sequential_s"]), f"{r['speedup_vs_sequential']:.2f}x", _pct(r.get("peak_fraction")),
                      _fmt(r.get("speedup_ceiling"), ".1f") + "x" if r.get("speedup_ceiling") else "-",
                      f"{r['wide_batch_speedup']:.2f}x" if "wide_batch_speedup" in r else "-"]
                     for r in by("vmap")]), ""]


def _batch_scaling(by: Records) -> list[str]:
    if not by("batch_scaling"):
        return []
    out = ["## Batch-size scaling", "",
           *_table(["config", "batch", "step ms", "examples/s", "% peak", "XLA MB"],
                   [[r["config"], str(r["batch"]), f"{_ms(r['median_s'])} ± {_ms(r['iqr_s'])}",
                     _fmt(r["examples_per_s"], ".4g"), _pct(r.get("peak_fraction")), _mb(r.get("xla_total_bytes"))]
                    for r in by("batch_scaling")]), ""]
    if by("memory_budget"):
        out += ["Largest batch within the memory budget (XLA's buffers, affine in the batch from the two largest "
                "batches):", "",
                *_table(["config", "budget MB", "MB per example", "fixed MB", "largest batch"],
                        [[r["config"], _mb(r["budget_bytes"]), _fmt(r["bytes_per_example"] / 2**20, ".3g"),
                          _mb(r["fixed_bytes"]), str(r["largest_batch"])] for r in by("memory_budget")]), ""]
    return out


def _data_parallel(by: Records) -> list[str]:
    if not by("data_parallel"):
        return []
    return ["## Data parallel (fixed global batch, state replicated, batch sharded; on CPU: forced host "
            "devices sharing the same cores)", "",
            *_table(["config", "batch", "devices", "step ms", "examples/s", "speedup vs first"],
                    [[r["config"], str(r["batch"]), str(r["devices"]), _timed(r),
                      _fmt(r.get("examples_per_s"), ".4g"), _fmt(r.get("speedup_vs_first"), ".2f")]
                     for r in by("data_parallel")]), ""]


def _input(by: Records) -> list[str]:
    if not by("input"):
        return []
    return ["## Input pipeline vs the step", "",
            "The pipeline alone (batches/s), and the training loop's steps/s fed by it vs by one constant batch in "
            "memory, alternating. `loop ratio` 1.0: the step never waits on the data.", "",
            *_table(["config", "batch", "data", "threads / prefetch / workers", "pipeline batches/s", "steps/s: pipeline",
                     "steps/s: constant batch", "pipeline / step rate", "loop ratio"],
                    [[r["config"], str(r["batch"]), r["data"], f"{r['num_threads']} / {r['prefetch']} / {r['num_workers']}",
                      f"{r['pipeline_batches_per_s']:.1f}", f"{r['steps_per_s_pipeline']:.2f}",
                      f"{r['steps_per_s_constant']:.2f}", f"{r['pipeline_vs_step']:.1f}x",
                      f"{r['loop_ratio']:.3f}"] for r in by("input")]), ""]


def _donation(by: Records) -> list[str]:
    if not by("donation"):
        return []
    return ["## State donation (`donate_argnums`) on/off", "",
            *_table(["config", "batch", "variant", "input buffers deleted", "step ms"],
                    [[r["config"], str(r["batch"]), r["variant"], str(r["input_deleted"]),
                      f"{_ms(r['median_s'])} ± {_ms(r['iqr_s'])}"] for r in by("donation")]), ""]


def _xla_flags(by: Records, env: dict) -> list[str]:
    if not by("xla_flags"):
        return []
    return ["## XLA flags (each in a fresh subprocess, one device)", "",
            f"`(as run)`: this run's XLA_FLAGS, `{env['XLA_FLAGS'] or '(unset)'}`; the other rows change "
            "them as stated.", "",
            *_table(["config", "batch", "XLA_FLAGS", "XLA compile s", "step ms", "speedup vs as run"],
                    [[r["config"], str(r["batch"]), f"`{r['flags']}`", _fmt(r.get("compile_s")), _timed(r),
                      _fmt(r.get("speedup_vs_as_run"), ".2f")] for r in by("xla_flags")]), ""]


def _kernels(by: Records) -> list[str]:
    if not by("kernel"):
        return []
    return ["## Single layers (convolution kinds of the MNIST conv configs)", "",
            "forward+backward = gradient w.r.t. input and weights; % peak = achieved FLOP/s over the f32 "
            "matmul timed in between.", "",
            *_table(["layer", "batch", "mode", "ms", "GFLOP", "GFLOP/s", "% peak"],
                    [[r["kernel"], str(r["batch"]), r["mode"], _ms(r["median_s"]),
                      _fmt(r["flops"] / 1e9 if r.get("flops") else None), _fmt(r.get("gflops_per_s")),
                      _pct(r.get("peak_fraction"))] for r in by("kernel")]), ""]


def _samplers(by: Records) -> list[str]:
    if not by("sampler"):
        return []
    return ["## Sampling (compiled `lax.scan` samplers)", "",
            "ratio = sampler time / (network calls x one jitted call of the network (as a data predictor) at the "
            "same batch); no-network = the same DDPM/DDIM sampler with a denoiser that returns 0 (noise draws, "
            "posterior arithmetic and the scan alone); first call includes compilation.", "",
            *_table(["config", "sampler", "network calls", "n", "sample s", "first call s", "one call ms",
                     "calls x call s", "ratio", "no-network s"],
                    [[r["config"], r["sampler"], str(r["steps"]), str(r["n"]), _fmt(r["median_s"]),
                      _fmt(r["first_call_s"]), _ms(r["denoiser_call_s"]), _fmt(r["steps_x_call_s"]),
                      f"{r['overhead_ratio']:.2f}", _fmt(r.get("no_network_s"))] for r in by("sampler")]), ""]


def _peers(by: Records) -> list[str]:
    if not by("peer"):
        return []

    def torch_ms(r: dict, label: str) -> str:
        if f"torch_{label}_median_s" in r:
            return f"{_ms(r[f'torch_{label}_median_s'])} ± {_ms(r[f'torch_{label}_iqr_s'])}"
        return "n/a: " + r.get(f"torch_{label}_error", "-").replace("|", "/")[:120]

    def ratio(r: dict, label: str) -> str:
        return f"{r[f'ratio_{label}']:.2f}x" if f"ratio_{label}" in r else "-"

    return ["## gen_jax vs PyTorch (`--peers torch`)", "",
            "Each config's compiled step against its PyTorch twin (`experiments/benchmark/peers`: the same parameter "
            "count per player, loss structure and optimizer; NCHW, PyTorch's native layout), eager and with the loss "
            "under `torch.compile`, timed in alternating rounds in this run. ratio = PyTorch's step time / "
            "gen_jax's (> 1: gen_jax faster); compile s = the first compiled call.", "",
            *_table(["config", "batch", "params (= twin)", "gen_jax ms", "PyTorch eager ms", "torch.compile ms",
                     "ratio eager", "ratio compile", "compile s"],
                    [[r["config"], str(r["batch"]), _n_params(r["params"]) + ("" if r["params_equal"] else " (twin: "
                      + _n_params(r.get("twin_params") or {}) + ")"),
                      f"{_ms(r['jax_median_s'])} ± {_ms(r['jax_iqr_s'])}", torch_ms(r, "eager"),
                      torch_ms(r, "compile"), ratio(r, "eager"), ratio(r, "compile"),
                      _fmt(r.get("torch_compile_first_s"), ".0f")] for r in by("peer")]),
            "", f"PyTorch: {by('peer')[0]['peer']}, {by('peer')[0]['torch_threads']} threads.", ""]


def _peer_layers(by: Records, top: int = 6) -> list[str]:
    recs = by("peer_layers")
    if not recs:
        return []
    steps = {r["config"]: r for r in by("peer")}
    kinds = {"conv": "convolutions", "dense": "dense layers", "norm": "group norms (+ activation)", "all": "all"}
    rows = []
    for r in recs:
        step = steps.get(r["config"], {})
        for kind, sums in r["sums"].items():
            rows.append([r["config"], str(r["batch"]), kinds[kind], f"{sums['calls']} ({sums['distinct']})",
                         _fmt(sums["jax_fwd_ms"], ".4g"), _fmt(sums["torch_fwd_ms"], ".4g"),
                         _fmt(sums["jax_fwdbwd_ms"], ".4g"), _fmt(sums["torch_fwdbwd_ms"], ".4g"),
                         f"{sums['ratio_fwdbwd']:.2f}x",
                         _ms(step.get("jax_median_s")) if kind == "all" else "",
                         _ms(step.get("torch_eager_median_s")) if kind == "all" else ""])
    lines = ["## Layers alone: gen_jax vs PyTorch (`--peers torch`, section `peer_layers`)", "",
             "Every convolution, dense layer and group norm (with its fused activation) the config's train step "
             "calls, each timed alone (gen_jax: the same flax module compiled; PyTorch eager `Conv2d` / `Linear` / "
             "`GroupNorm` + activation, NCHW), alternating, summed over the calls (ms). ratio = PyTorch's sum / "
             "gen_jax's over the layers PyTorch mirrors. Beside them, the whole steps of the 'peers' section: what a "
             "step spends outside these layers is the step minus their forward + backward.", "",
             *_table(["config", "batch", "layers", "calls (distinct)", "gen_jax fwd", "PyTorch fwd",
                      "gen_jax fwd+bwd", "PyTorch fwd+bwd", "ratio fwd+bwd", "gen_jax step", "PyTorch eager step"],
                     rows), ""]
    for r in recs:
        worst = sorted((x for x in r["layers"] if "torch_fwdbwd_ms" in x),
                       key=lambda x: -x["count"] * abs(x["jax_fwdbwd_ms"] - x["torch_fwdbwd_ms"]))[:top]
        lines += [f"{r['config']}: the {len(worst)} layers with the largest difference (ms per call):", "",
                  *_table(["layer", "calls", "gen_jax fwd", "PyTorch fwd", "gen_jax fwd+bwd", "PyTorch fwd+bwd"],
                          [[x["name"], str(x["count"]), _fmt(x["jax_fwd_ms"]), _fmt(x["torch_fwd_ms"]),
                            _fmt(x["jax_fwdbwd_ms"]), _fmt(x["torch_fwdbwd_ms"])] for x in worst]), ""]
    return lines + [f"PyTorch: {recs[0]['peer']}, {recs[0]['torch_threads']} threads.", ""]


def _loop_check(by: Records) -> list[str]:
    loops = {r["config"]: r for r in by("loop_check")}
    if not loops:
        return []
    return ["## Loop check (traces / compilations / implicit transfers in `fit`)", "",
            "`runs ahead`: the loop asked for the next batch less than half a step after dispatching a "
            "step (no per-step host sync; judged for steps >= 5 ms). `data source`: implicit transfers made "
            "by the run's own batch source (ToyBatches / Batches), outside the loop proper.", "",
            *_table(["config", "steps", "traces", "compiles", "transfer guard",
                     "runs ahead (min dispatch gap / step ms)", "data source transfers"],
                    [[r["config"], str(r["steps"]), str(r["traces"]), str(r["compiles"]),
                      "ok" if r["transfer_guard_ok"] else f"FAIL: {r['transfer_error']}",
                      f"{ {True: 'yes', False: 'NO', None: 'not judged'}[r.get('runs_ahead')]} "
                      f"({_ms(r.get('dispatch_gap_min_s'))} / {_ms(r.get('step_s'))})",
                      r.get("data_source_transfers", "-")] for r in loops.values()]), ""]


def _targets(targets: list[dict]) -> list[str]:
    return ["## Targets", "",
            *_table(["target", "measured", "status"],
                    [[t["target"], t["measured"], {True: "met", False: "NOT met", None: "not measured"}[t["met"]]]
                     for t in targets]), ""]


def _skipped(by: Records) -> list[str]:
    notes = by("skipped") + by("error")
    if not notes:
        return []
    return ["## Skipped / failed", "",
            *_table(["family", "config", "what", "reason"],
                    [[r.get("family", "-"), r.get("config", "-"), r.get("what", r["kind"]),
                      r.get("reason", r.get("error", "")).replace("|", "/").replace("\n", " ")[:300]]
                     for r in notes]), ""]


def render_architectures(layers: dict[str, dict]) -> str:
    """Per config, the parameters grouped by module (the architecture as its parameters show it)."""
    lines = ["# Architectures (parameter shapes by module)", ""]
    for name, info in layers.items():
        lines += [f"## {name} ({info['family']}, {info['size']}): {info['total']:,} parameters", ""]
        lines += _table(["module", "parameters", "count"],
                        [[m, s, f"{c:,}"] for m, s, c in info["rows"]])
        lines.append("")
    return "\n".join(lines)
