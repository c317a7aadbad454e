"""``python -m experiments.derivations [--family gan|vae|flow|diffusion] [--out DIR] [--fast]``.

Exit status 0 only if every identity passes.
"""

from __future__ import annotations

import argparse
import sys

from experiments.derivations.report import FAMILIES, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.derivations", description=__doc__.split("\n")[0])
    parser.add_argument("--family", action="append", choices=sorted(FAMILIES),
                        help="family to check (repeatable; default: all four)")
    parser.add_argument("--out", default="runs/derivations", help="output directory (default: runs/derivations)")
    parser.add_argument("--fast", action="store_true", help="smaller samples and fewer models (< 1 min on 2 cores)")
    args = parser.parse_args(argv)
    from gen_jax.train import configure_xla_cpu

    configure_xla_cpu()  # before the first JAX computation, as every experiments CLI
    records, _, _ = run(args.family, args.out, fast=args.fast)
    return 0 if records and all(r.passed for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
