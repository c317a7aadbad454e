"""``python -m experiments.benchmark``: the command line of the benchmark (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import os
import sys

import experiments.benchmark as benchmark
from experiments.benchmark.driver import PEERS, run
from experiments.benchmark.report import render_markdown
from experiments.benchmark.suites import FAMILY_ORDER, SECTIONS, SUITES
from experiments.benchmark.workers import worker


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.benchmark",
                                     description=benchmark.__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), default="standard")
    parser.add_argument("--family", default=",".join(FAMILY_ORDER),
                        help="comma-separated families (default: all four)")
    parser.add_argument("--configs", default="", help="config names separated by ';' or ',' (default: one "
                                                      "per family and size class); name[key=value,...] "
                                                      "times a variant")
    parser.add_argument("--out", default="runs/benchmark", help="output directory")
    parser.add_argument("--skip", default="", help=f"comma-separated sections to leave out: {','.join(SECTIONS)}")
    parser.add_argument("--only", default="", help="comma-separated sections to run alone (no per-config table)")
    parser.add_argument("--data_dir", default=None, help="tfds data_dir: the input section reads the real "
                                                         "datasets from it (else random images from a file)")
    parser.add_argument("--peers", default="", choices=("", *PEERS),
                        help="time each config's PyTorch twin next to it (needs torch; not in the default install)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    families = _names(args.family)
    bad = [f for f in families if f not in FAMILY_ORDER]
    if bad:
        parser.error(f"--family: unknown {bad}; expected a comma-separated subset of {list(FAMILY_ORDER)}")
    names = benchmark.split_specs(args.configs)
    skip, only = _names(args.skip), _names(args.only)
    for flag, value in (("--skip", skip), ("--only", only)):
        if set(value) - set(SECTIONS):
            parser.error(f"{flag}: unknown {sorted(set(value) - set(SECTIONS))}; expected a subset of {list(SECTIONS)}")
    from gen_jax.train import configure_xla_cpu

    configure_xla_cpu()  # what `experiments.train` runs with; worker subprocesses inherit it
    result = run(SUITES[args.suite], families, args.out, names, argv,
                 log=lambda m: print(m, file=sys.stderr, flush=True), skip=skip, only=only, data_dir=args.data_dir,
                 peers=_names(args.peers))
    print(render_markdown(result))
    print(f"wrote {os.path.join(args.out, 'benchmark.json')} and benchmark.md, architectures.md "
          f"({result['env']['wall_s']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
