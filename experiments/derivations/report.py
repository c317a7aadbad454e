"""Runs the checks of the chosen families and writes ``derivations.md``, ``derivations.json`` and figures.

``run_checks`` evaluates every check of each family inside ``jax.enable_x64(True)``; a check that
raises becomes a failed record (so a missing or renamed library function shows up in the report
instead of aborting it). ``write_report`` draws each record's figure and writes the two files.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import time
import traceback
from typing import Callable, Sequence

import jax

from experiments.derivations import diffusion, flow, gan, vae
from experiments.derivations.common import Check

# Family name -> module with ``checks(fast) -> list of thunks``; in the seed's order.
FAMILIES = {"gan": gan, "vae": vae, "flow": flow, "diffusion": diffusion}
TITLES = {"gan": "GAN", "vae": "VAE", "flow": "Normalizing flows", "diffusion": "Diffusion"}


def _thunk_name(thunk: Callable) -> str:
    func = getattr(thunk, "func", thunk)
    return getattr(func, "__name__", "check")


def _as_list(result: Check | Sequence[Check]) -> list[Check]:
    return [result] if isinstance(result, Check) else list(result)


def run_checks(families: Sequence[str], fast: bool, log: Callable[[str], None] | None = print) -> list[Check]:
    """Every check of ``families`` (in float64); errors become failed records."""
    records: list[Check] = []
    for family in families:
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; expected one of {sorted(FAMILIES)}")
        with jax.enable_x64(True):
            for thunk in FAMILIES[family].checks(fast):
                t0 = time.perf_counter()
                try:
                    new = _as_list(thunk())
                except Exception as e:  # noqa: BLE001 - reported as a failed identity
                    name = _thunk_name(thunk)
                    new = [Check(family=family, name=f"error_in_{name}", title=f"{name} raised {type(e).__name__}",
                                 formula=r"\text{(not evaluated)}", lhs=math.nan, rhs=math.nan, abs_error=math.nan,
                                 tolerance=math.nan, passed=False,
                                 note=traceback.format_exception_only(type(e), e)[-1].strip())]
                dt = time.perf_counter() - t0
                for rec in new:
                    if log:
                        log(f"[{family}] {'PASS' if rec.passed else 'FAIL'} {rec.name} "
                            f"(error {rec.abs_error:.2e}, tolerance {rec.tolerance:.2e})")
                if log:
                    log(f"[{family}]   {_thunk_name(thunk)}: {dt:.1f} s")
                records.extend(new)
    return records


def _fmt(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    if v == 0:
        return "0"
    return f"{v:.10g}" if 1e-4 <= abs(v) < 1e6 else f"{v:.6e}"


def _short(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return "0" if v == 0 else f"{v:.2e}"


def _cell(text: str) -> str:
    """Text for a markdown table cell (a literal | would end the cell)."""
    return text.replace("|", "\\|")


def _anchor(r: Check) -> str:
    """GitHub's anchor of the heading ``### family: name`` (lower case, punctuation but -_ dropped)."""
    text = f"{r.family}: {r.name}".lower()
    return "".join(c for c in text if c.isalnum() or c in "-_ ").replace(" ", "-")


RELATION_WORDS = {"==": "|lhs - rhs|", ">=": "violation of lhs >= rhs", "<=": "violation of lhs <= rhs"}


def _family_intro(family: str) -> str:
    doc = inspect.getdoc(FAMILIES[family]) or ""
    return doc.split("\n", 1)[1].strip() if "\n" in doc else ""


def draw_figures(records: list[Check], out_dir: str) -> list[Check]:
    """Calls each record's ``plot`` into ``out_dir/<family>_<name>.png``; returns records with ``figure``."""
    import matplotlib

    matplotlib.use("Agg")
    out = []
    for rec in records:
        if rec.plot is not None:
            fname = f"{rec.family}_{rec.name}.png"
            try:
                rec.plot(os.path.join(out_dir, fname))
                rec = dataclasses.replace(rec, figure=fname)
            except Exception as e:  # noqa: BLE001 - a figure must not sink the report
                rec = dataclasses.replace(rec, note=f"{rec.note} (figure failed: {type(e).__name__}: {e})")
        out.append(rec)
    return out


def markdown(records: list[Check], *, command: str, fast: bool, wall_s: float) -> str:
    """The report: a summary table, then each family's identities with formula, values and figure."""
    n_pass = sum(r.passed for r in records)
    lines = [
        "# Derivations: each objective of the seed, checked numerically",
        "",
        f"`{command}` — {'fast' if fast else 'full'} run, {wall_s:.0f} s wall time, "
        f"**{n_pass}/{len(records)} identities pass**.",
        "",
        "Every identity is evaluated twice: the **library side** (lhs) with gen_jax's own functions, and "
        "the **independent side** (rhs) by a closed form, quadrature, Monte Carlo with a stated standard "
        "error, or autodiff. Everything runs in float64 unless a record says otherwise. For an equality "
        "the error is |lhs - rhs|; for an inequality it is the amount by which it is violated (0 when it "
        "holds). A record that compares many values shows the worst one (relative to its tolerance; for "
        "an inequality, the one with the smallest slack).",
        "",
        "| family | identity | library (lhs) | independent (rhs) | error | tolerance | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(f"| {r.family} | [{r.name}](#{_anchor(r)}) | {_fmt(r.lhs)} | "
                     f"{_fmt(r.rhs)} | {_short(r.abs_error)} | {_short(r.tolerance)} | "
                     f"{'PASS' if r.passed else '**FAIL**'} |")
    for family in FAMILIES:
        recs = [r for r in records if r.family == family]
        if not recs:
            continue
        lines += ["", f"## {TITLES[family]}", "", _family_intro(family), ""]
        for r in recs:
            lines += [
                f"### {r.family}: {r.name}", "",
                f"**{r.title}**", "",
                "$$", r.formula, "$$", "",
                "| side | value | computed by |", "|---|---|---|",
                f"| library (lhs) | {_fmt(r.lhs)} | {_cell(r.lhs_how)} |",
                f"| independent (rhs) | {_fmt(r.rhs)} | {_cell(r.rhs_how)} |", "",
                f"Relation `lhs {r.relation} rhs`; error ({RELATION_WORDS[r.relation]}) = {_short(r.abs_error)}, "
                f"tolerance = {_short(r.tolerance)}: **{'PASS' if r.passed else 'FAIL'}**.", "",
            ]
            if r.note:
                lines += [r.note, ""]
            if r.figure:
                lines += [f"![{r.name}]({r.figure})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(records: list[Check], out_dir: str, *, command: str, fast: bool, wall_s: float,
                 families: Sequence[str]) -> tuple[str, str]:
    """Writes ``derivations.md`` and ``derivations.json`` (figures: :func:`draw_figures`); returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    md_path = os.path.join(out_dir, "derivations.md")
    json_path = os.path.join(out_dir, "derivations.json")
    with open(md_path, "w") as f:
        f.write(markdown(records, command=command, fast=fast, wall_s=wall_s))
    payload = {
        "command": command, "fast": fast, "families": list(families), "wall_s": round(wall_s, 2),
        "passed": all(r.passed for r in records), "num_records": len(records),
        "records": [r.to_json() for r in records],
    }
    with open(json_path, "w") as f:
        json.dump(payload, f, indent=1)
    return md_path, json_path


def run(families: Sequence[str] | None = None, out_dir: str = "runs/derivations", *, fast: bool = False,
        command: str | None = None, log: Callable[[str], None] | None = print) -> tuple[list[Check], str, str]:
    """Runs the checks and writes the report. Returns (records, markdown path, json path)."""
    families = list(families or FAMILIES)
    if command is None:
        command = "python -m experiments.derivations" + "".join(f" --family {f}" for f in families
                                                                 if len(families) < len(FAMILIES)) \
            + f" --out {out_dir}" + (" --fast" if fast else "")
    t0 = time.perf_counter()
    records = run_checks(families, fast, log)
    wall = time.perf_counter() - t0
    os.makedirs(out_dir, exist_ok=True)
    records = draw_figures(records, out_dir)
    md_path, json_path = write_report(records, out_dir, command=command, fast=fast, wall_s=wall, families=families)
    if log:
        n_pass = sum(r.passed for r in records)
        log(f"{n_pass}/{len(records)} identities pass ({wall:.1f} s); wrote {md_path} and {json_path}")
    return records, md_path, json_path
