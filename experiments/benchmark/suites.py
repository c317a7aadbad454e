"""What a benchmark run measures: the suites, the sections, the targets, and which configs stand for
each (family, size class)."""

from __future__ import annotations

import dataclasses
import math
import pkgutil
from typing import Any

from experiments.benchmark import tasks
from experiments.benchmark.configs import load_config

FAMILY_ORDER = ("flow", "diffusion", "vae", "gan")
SIZE_ORDER = ("toy", "mnist", "cifar")
# the size class of image data, by example shape [H, W, C]; toy data are size 'toy'
SIZE_BY_SHAPE = {(28, 28, 1): "mnist", (32, 32, 3): "cifar"}
# Which config stands for a (family, size) when several exist: first match wins, then alphabetical.
PREFERRED_CONFIGS = ("realnvp_toy", "ddpm_toy", "vae_toy", "gan_ring8")
# cross-config sections, in the order they run (``--skip`` / ``--only`` name them)
SECTIONS = ("op_by_op", "vmap", "scaling", "dp", "samplers", "donation", "flags", "kernels", "input", "peers",
            "peer_layers")
TARGETS = {
    "peer_eager": 1.0,  # PyTorch eager step time / gen_jax's, every config with a twin (--peers torch), CPU
    "peer_compile": 0.9,  # the same against torch.compile
    "sampler_overhead": 1.10,  # compiled sampler time / (steps x one denoiser call)
    "vmap8_vs_wide_batch": 0.9,  # 8 seeds in one program vs ONE seed at 8x the batch (its step time / theirs), toy
    "conv_seeds_vs_sequential": 0.9,  # K seeds of a conv config in one program (replica_map="auto") vs K runs
}


@dataclasses.dataclass(frozen=True)
class Suite:
    """What one suite measures and how long it may take.

    Attributes:
      name: suite name.
      config_arg: argument passed to every ``get_config`` (``'smoke'`` shrinks the models).
      measure_sizes: size classes whose train steps are compiled and timed.
      describe_sizes: size classes whose parameter count and FLOPs (from the lowered, unoptimised
        HLO) are reported without compiling (models too big to time on this platform).
      batch_size: batch per size class (0: the config's own batch size).
      warmup: untimed steps before timing.
      steps: timed steps (median and IQR over them).
      matmul_n: side of the square f32 matmul whose throughput is the peak.
      op_by_op_steps: steps timed without jit (first toy config).
      vmap_seeds: K values for vmap over seeds (toy configs).
      conv_seeds: K values for the seeds of one convolutional config per ``tuning_sizes`` class (the
        cheapest), each with ``replica_map`` 'auto' (unrolled) and 'vmap'; () skips them.
      scaling_batches: batch sizes per size class for batch-size scaling (one config per class).
      dp_devices: device counts for data parallelism (subprocesses).
      dp_sizes: size classes measured data-parallel (one config per class).
      loop_steps: steps of ``fit`` under the no-retrace / no-transfer check.
      ddim_steps: DDIM sampler steps (DDPM uses all T steps of the config's schedule).
      sample_n: samples per sampler call, per size class.
      ddpm_sizes: size classes on which the full DDPM chain is timed (it costs T denoiser calls).
      tuning_sizes: size classes whose chosen config is timed with and without state donation and
        under each of ``flag_variants``.
      flag_variants: extra ``XLA_FLAGS`` strings, each timed in a fresh subprocess.
      kernel_batch: batch of the single-layer (convolution kind) measurements; 0 skips them.
      section_steps: timed steps of batch scaling, data parallelism and XLA flags (twice that for
        donation); they time the cheapest config of a size class (fastest step in the main table).
      variants: config overrides (``'train.precision=bfloat16'``, ``'model.remat=full'``) each measured config
        of ``variant_sizes`` is also timed with, next to it in the main table (step time, memory): the
        ratios of one run. A config without the overridden field is skipped with a note.
      variant_sizes: the size classes whose configs get the variants (also timed in the batch scaling).
      memory_budget_bytes: the memory the largest-batch fit of the batch scaling aims at (0: the device's
        own limit where it reports one; none on CPU).
    """

    name: str
    config_arg: str | None
    measure_sizes: tuple[str, ...]
    describe_sizes: tuple[str, ...]
    batch_size: dict[str, int]
    warmup: int
    steps: int
    matmul_n: int
    op_by_op_steps: int
    vmap_seeds: tuple[int, ...]
    scaling_batches: dict[str, tuple[int, ...]]
    dp_devices: tuple[int, ...]
    dp_sizes: tuple[str, ...]
    loop_steps: int
    ddim_steps: int
    sample_n: dict[str, int]
    ddpm_sizes: tuple[str, ...]
    tuning_sizes: tuple[str, ...] = ()
    flag_variants: tuple[str, ...] = ()
    kernel_batch: int = 0
    section_steps: int = 5
    variants: tuple[str, ...] = ()
    variant_sizes: tuple[str, ...] = ()
    memory_budget_bytes: int = 0
    conv_seeds: tuple[int, ...] = ()


CPU_FLAG_VARIANTS = (
    "--xla_cpu_use_thunk_runtime=false",  # the older whole-program LLVM runtime
    "--xla_cpu_multi_thread_eigen=false",  # one thread for Eigen dots/convs (a control: should be slower)
)

SUITES = {
    "smoke": Suite(
        name="smoke", config_arg="smoke", measure_sizes=("toy",), describe_sizes=(),
        batch_size={"toy": 64}, warmup=1, steps=5, matmul_n=512, op_by_op_steps=0,
        vmap_seeds=(1, 2), scaling_batches={"toy": (32, 64)}, dp_devices=(2,), dp_sizes=("toy",),
        loop_steps=3, ddim_steps=5, sample_n={"toy": 64}, ddpm_sizes=("toy",), tuning_sizes=("toy",)),
    "standard": Suite(
        name="standard", config_arg=None, measure_sizes=("toy", "mnist"), describe_sizes=("cifar",),
        batch_size={"toy": 0, "mnist": 128}, warmup=3, steps=20, matmul_n=2048, op_by_op_steps=5,
        vmap_seeds=(1, 4, 8), scaling_batches={"toy": (64, 256, 1024, 4096), "mnist": (32, 64, 128, 256)},
        dp_devices=(1, 2, 4), dp_sizes=("mnist",), loop_steps=5, ddim_steps=50,
        sample_n={"toy": 1000, "mnist": 16}, ddpm_sizes=("toy",), tuning_sizes=("mnist",),
        flag_variants=CPU_FLAG_VARIANTS, kernel_batch=128, conv_seeds=(4,)),
    "gpu": Suite(
        name="gpu", config_arg=None, measure_sizes=("toy", "mnist", "cifar"), describe_sizes=(),
        batch_size={"toy": 1024, "mnist": 256, "cifar": 128}, warmup=5, steps=50, matmul_n=8192,
        op_by_op_steps=5, vmap_seeds=(1, 4, 8),
        scaling_batches={"toy": (256, 1024, 4096, 16384), "mnist": (64, 128, 256, 512),
                         "cifar": (32, 64, 128, 256)},
        dp_devices=(1, 2, 4, 8), dp_sizes=("cifar",), loop_steps=10, ddim_steps=50,
        sample_n={"toy": 10_000, "mnist": 64, "cifar": 64}, ddpm_sizes=("toy", "mnist", "cifar"),
        tuning_sizes=("cifar",), kernel_batch=128, section_steps=20, conv_seeds=(4,),
        variants=("train.precision=bfloat16", "train.precision=float16", "model.remat=dots", "model.remat=full",
                  "train.precision=bfloat16,model.remat=full"), variant_sizes=("mnist", "cifar")),
}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One benchmarked config: its spec (module name [overrides], see :func:`configs.load_config`),
    the loaded config, its family and size class."""

    name: str
    config: Any
    family: str
    size: str


def size_class(config) -> str:
    """``'toy'``, ``'mnist'`` or ``'cifar'`` (by the example shape of image data), else ``'other'``."""
    from gen_jax.data import images as image_data
    from gen_jax.data import toy as toy_data

    name = config.data.name
    if name in toy_data.TOY_DATASETS:
        return "toy"
    if name not in image_data.IMAGE_DATASETS:
        return "other"
    return SIZE_BY_SHAPE.get(tasks.image_info(name)[0], "other")


def entry_of(spec: str, config_arg: str | None) -> Entry:
    """The :class:`Entry` of a config spec."""
    config = load_config(spec, config_arg)
    return Entry(spec, config, config.family, size_class(config))


def discover(families: tuple[str, ...], config_arg: str | None, names: tuple[str, ...] = ()
             ) -> tuple[list[Entry], list[dict]]:
    """Loads every config of ``experiments/configs`` (or only ``names``) of the given families.

    Returns:
      ``(entries, skipped)``: one entry per (family, size class) — or every named config — and a
      record per family or config that could not be loaded, with the reason.
    """
    import experiments.configs

    skipped, by_group = [], {}
    for family in families:
        try:
            tasks.import_family(family)
        except ImportError as e:  # an unfinished family: its task module or a module it needs is missing
            skipped.append({"kind": "skipped", "family": family, "config": "-",
                            "reason": f"task module {tasks.family_module(family)} not importable: "
                                      f"{type(e).__name__}: {e}"})
    available = [m.name for m in pkgutil.iter_modules(experiments.configs.__path__) if m.name != "common"]
    for name in names or sorted(available):
        try:
            config = load_config(name, config_arg)
        except (ImportError, ValueError, TypeError) as e:  # no such config, a bad spec or argument
            skipped.append({"kind": "skipped", "family": "?", "config": name,
                            "reason": f"get_config({config_arg!r}) failed: {type(e).__name__}: {e}"})
            continue
        if config.family in families and not any(s["family"] == config.family for s in skipped):
            entry = Entry(name, config, config.family, size_class(config))
            by_group.setdefault((entry.family, entry.size), []).append(entry)
    entries = []
    for (family, size), group in sorted(by_group.items(), key=lambda kv: (
            FAMILY_ORDER.index(kv[0][0]), SIZE_ORDER.index(kv[0][1]) if kv[0][1] in SIZE_ORDER else 9)):
        if names:
            entries.extend(group)
            continue
        group.sort(key=lambda e: (e.name not in PREFERRED_CONFIGS, e.name))
        entries.append(group[0])
    return entries, skipped


def batch_for(entry: Entry, suite: Suite) -> int:
    """The batch size ``suite`` times ``entry`` at (the config's own where the suite says 0)."""
    return suite.batch_size.get(entry.size) or entry.config.data.batch_size


def cheapest(entries: list[Entry], records: list[dict]) -> Entry | None:
    """The config of ``entries`` whose train step was fastest in the main measurement (ties and
    unmeasured configs: family order), used for the sections that time one config many times."""
    step_s = {r["config"]: r["median_s"] for r in records if r["kind"] == "step"}
    return min(entries, key=lambda e: (step_s.get(e.name, math.inf), FAMILY_ORDER.index(e.family)),
               default=None)


def evaluate_targets(records: list[dict], backend: str) -> list[dict]:
    """Each target: measured values, and whether it is met (``None``: not measured in this run)."""
    out = []
    peer = [r for r in records if r["kind"] == "peer" and "ratio_eager" in r]
    out.append({"target": f"gen_jax's step >= {TARGETS['peer_eager']}x PyTorch eager and >= "
                          f"{TARGETS['peer_compile']}x torch.compile on the same CPU (--peers torch)",
                "measured": ", ".join(f"{r['config']} {r['ratio_eager']:.2f}x / "
                                      + (f"{r['ratio_compile']:.2f}x" if "ratio_compile" in r else "n/a")
                                      for r in peer) or "-",
                "met": (all(r["ratio_eager"] >= TARGETS["peer_eager"]
                            and r.get("ratio_compile", math.inf) >= TARGETS["peer_compile"] for r in peer)
                        if peer and backend == "cpu" else None)})
    samp = [r for r in records if r["kind"] == "sampler"]
    out.append({"target": f"compiled sampler <= {TARGETS['sampler_overhead']} x (steps x one denoiser call)",
                "measured": ", ".join(f"{r['config']} {r['sampler']}-{r['steps']} {r['overhead_ratio']:.2f}x"
                                      for r in samp) or "-",
                "met": all(r["overhead_ratio"] <= TARGETS["sampler_overhead"] for r in samp) if samp else None})
    vm = [r for r in records if r["kind"] == "vmap" and r["seeds"] == 8 and r["size"] == "toy" and "wide_batch_s" in r]
    out.append({"target": f"vmap over 8 seeds >= {TARGETS['vmap8_vs_wide_batch']}x the throughput of one seed at "
                          f"8x the batch (toy)",
                "measured": ", ".join(f"{r['config']} {r['wide_batch_s'] / r['median_s']:.2f}x" for r in vm) or "-",
                "met": (all(r["wide_batch_s"] / r["median_s"] >= TARGETS["vmap8_vs_wide_batch"] for r in vm)
                        if vm else None)})
    cs = [r for r in records if r["kind"] == "vmap" and r["seeds"] > 1 and r["size"] != "toy"
          and r["method"].startswith("replica_map=auto")]
    out.append({"target": f"K seeds of a convolutional config in one program >= {TARGETS['conv_seeds_vs_sequential']}x "
                          f"the throughput of K sequential runs (replica_map='auto')",
                "measured": ", ".join(f"{r['config']} K={r['seeds']} {r['speedup_vs_sequential']:.2f}x" for r in cs) or "-",
                "met": (all(r["speedup_vs_sequential"] >= TARGETS["conv_seeds_vs_sequential"] for r in cs)
                        if cs else None)})
    lc = [r for r in records if r["kind"] == "loop_check"]
    out.append({"target": "no retrace or implicit host transfer inside the training loop",
                "measured": ", ".join(f"{r['config']} traces={r['traces']} compiles={r['compiles']} "
                                      f"guard={'ok' if r['transfer_guard_ok'] else 'FAIL'}" for r in lc) or "-",
                "met": all(r["ok"] for r in lc) if lc else None})
    return out


def with_variants(entries: list[Entry], suite: Suite) -> tuple[list[Entry], list[dict]]:
    """``entries`` with, after each one of ``suite.variant_sizes``, one entry per ``suite.variants`` (its spec
    ``'name[override]'``); a variant whose override the config does not have becomes a skipped record."""
    out, skipped = [], []
    for e in entries:
        out.append(e)
        if e.size not in suite.variant_sizes or "[" in e.name:
            continue
        for override in suite.variants:
            spec = f"{e.name}[{override}]"
            try:
                out.append(entry_of(spec, suite.config_arg))
            except (ValueError, TypeError) as err:
                skipped.append({"kind": "skipped", "family": e.family, "config": spec,
                                "reason": f"{type(err).__name__}: {err}"})
    return out, skipped
