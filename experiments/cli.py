"""What the experiments CLIs share: configs found by name, override keys checked (with a suggestion for
a misspelt one), and one line per user error.

Exit codes: 0 success; 2 bad input (config, flags, workdir, data, checkpoint), nothing written;
3 the run failed (training diverged or the final evaluation is not finite); 130 interrupted (SIGTERM or
Ctrl-C: checkpoint written, rerun to resume); 1 a bug (with its traceback).
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import re
import sys
from typing import Callable

EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


class UsageError(ValueError):
    """A command line that cannot be run; the message says why and what would work."""


def available_configs() -> dict[str, str]:
    """``{name: path}`` of every experiment config in ``experiments/configs``."""
    names = sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
                   if f.endswith(".py") and f not in ("__init__.py", "common.py"))
    return {n: os.path.join(CONFIG_DIR, f"{n}.py") for n in names}


def config_summary(path: str) -> str:
    """The first sentence of a config file's docstring (read without running it)."""
    with open(path) as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    text = " ".join(doc.split("\n\n")[0].split())
    first = re.split(r"(?<!et al)\.\s+(?=[A-Z`])", text)[0].rstrip(".")
    return first if len(first) <= 110 else first[:107].rsplit(" ", 1)[0] + " ..."


def list_configs() -> str:
    """One line per config: its name and what it trains."""
    configs = available_configs()
    width = max(map(len, configs))
    lines = [f"{name:<{width}}  {config_summary(path)}" for name, path in configs.items()]
    return ("configs (give a name or a path; append ':smoke' for the seconds-long variant):\n  "
            + "\n  ".join(lines))


def resolve_config(value: str) -> str:
    """``path[:arg]`` of a ``--config`` value that is a path or a config name (``realnvp_toy:smoke``)."""
    path, sep, arg = value.partition(":")
    if os.path.isfile(path):
        return value
    name = os.path.basename(path)[:-3] if path.endswith(".py") else path
    configs = available_configs()
    if os.sep not in path and name in configs:
        return configs[name] + sep + arg
    close = difflib.get_close_matches(name, list(configs), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise UsageError(f"--config {value}: no such file or config; {hint}available configs: {', '.join(configs)} "
                     f"(--list_configs describes them)")


def load_config(value: str, shown: str | None = None):
    """The ConfigDict of a resolved ``path[:arg]`` (what ``--config`` loads), errors as UsageError
    (naming the config as ``shown``, the value the user gave)."""
    path, _, arg = value.partition(":")
    spec = importlib.util.spec_from_file_location("_gen_jax_config", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        return module.get_config(arg or None) if arg else module.get_config()
    except (ValueError, TypeError, KeyError) as e:
        raise UsageError(f"--config {shown or value}: {e}") from None


def config_keys(config, prefix: str = "") -> list[str]:
    """Every leaf key of a ConfigDict as a dotted path (``train.num_steps``)."""
    out = []
    for k, v in config.items():
        if hasattr(v, "items"):
            out += config_keys(v, f"{prefix}{k}.")
        out.append(f"{prefix}{k}")
    return out


def check_override_keys(config, keys: list[str]) -> None:
    """Raises UsageError naming the first override key the config does not have, with the closest key."""
    known = config_keys(config)
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UsageError(f"--config.{key}: the config has no key {key}{hint} (--dry_run prints every key)")


def prepare_argv(argv: list[str]) -> list[str]:
    """Resolves a config name in ``--config`` and checks every ``--config.<key>`` override against that
    config, before absl and ml_collections parse the flags (whose own errors are tracebacks)."""
    argv = list(argv)
    value, at = None, None
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            value, at = a[len("--config="):], i
        elif a == "--config" and i + 1 < len(argv):
            value, at = argv[i + 1], i + 1
    if value is None:
        return argv
    resolved = resolve_config(value)
    argv[at] = f"--config={resolved}" if argv[at].startswith("--config=") else resolved
    keys = [a[len("--config."):].split("=")[0] for a in argv if a.startswith("--config.")]
    check_override_keys(load_config(resolved, value), keys)
    return argv


def user_errors() -> tuple[type, ...]:
    """The exception types that mean bad input (exit 2, one line), not a bug."""
    from gen_jax.train import CheckpointError

    return (ValueError, FileNotFoundError, CheckpointError)


def run_and_exit_code(fn: Callable[[], int]) -> int:
    """Runs ``fn``; a user error or a diverged run prints one ``error: ...`` line on stderr and returns
    its exit code (2 or 3); anything else is a bug and propagates with its traceback."""
    from gen_jax.train import DivergedError

    try:
        return fn()
    except DivergedError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
