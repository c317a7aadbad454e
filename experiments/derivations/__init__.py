"""Reproduce each family's objective derivation numerically, with the library's own functions.

``python -m experiments.derivations [--family gan|vae|flow|diffusion] [--out DIR] [--fast]`` writes
``DIR/derivations.md`` (each identity: formula, both sides, error, tolerance, PASS/FAIL, figures) and
``DIR/derivations.json`` (one record per identity), and exits 0 only if every identity passes.

One module per family (:mod:`~experiments.derivations.gan`, :mod:`~experiments.derivations.vae`,
:mod:`~experiments.derivations.flow`, :mod:`~experiments.derivations.diffusion`); each check is a
function returning a :class:`~experiments.derivations.common.Check`, and ``checks(fast)`` lists them.
The tests call the same functions.
"""

from experiments.derivations.common import Check, compare
from experiments.derivations.report import FAMILIES, draw_figures, run, run_checks, write_report

__all__ = ["Check", "FAMILIES", "compare", "draw_figures", "run", "run_checks", "write_report"]
