"""XLA settings gen_jax runs with, set through ``XLA_FLAGS`` before JAX starts its backend.

XLA reads ``XLA_FLAGS`` once, when the first computation creates the backend, so
:func:`configure_xla_cpu` must run before anything touches a device (the CLIs of ``experiments/``:
train, quickstart, derivations, benchmark, call it first thing; so does ``tests/conftest.py``). Call it at the top of your own scripts to get the same speed::

    from gen_jax.train import configure_xla_cpu
    configure_xla_cpu()      # before the first jax computation
    import jax ...

Every flag is measured by ``python -m experiments.benchmark`` (its XLA-flags section times the
steps with and without them); ``experiments/BENCHMARKS.md`` has the numbers. The flags only change
XLA's CPU backend: on GPU/TPU they are read and ignored.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import MutableMapping

#: Flags :func:`configure_xla_cpu` adds. Convolutions run on XLA's own (Eigen) kernels instead of
#: YNNPACK's, which XLA 0.10-0.12 picks by default; dots stay on YNNPACK. The MNIST conv configs'
#: train steps were faster so on every CPU and jaxlib measured (experiments/BENCHMARKS.md).
XLA_CPU_FLAGS: tuple[str, ...] = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)

#: jaxlib (major, minor) versions the flags were tested with: XLA aborts on a flag it does not know,
#: so other versions get none until someone measures them there.
_KNOWN_JAXLIB = ((0, 10), (0, 11), (0, 12))


def flag_name(flag: str) -> str:
    """``'--name=value'`` -> ``'--name'``."""
    return flag.split("=", 1)[0]


def _jaxlib_version() -> tuple[int, int] | None:
    try:
        from jaxlib.version import __version__
    except ImportError:
        return None
    try:
        major, minor = (int(p) for p in __version__.split(".")[:2])
    except ValueError:
        return None
    return major, minor


def _backend_started() -> bool:
    """Whether JAX's backend is up. JAX has no public API for it: this is gen_jax's only private JAX
    import, guarded here, and ``tests/test_platform.py`` fails loudly when JAX moves it."""
    try:
        from jax._src import xla_bridge
    except ImportError:  # a JAX without this module: assume the backend is not up yet
        return False
    return bool(xla_bridge.backends_are_initialized())


def configure_xla_cpu(environ: MutableMapping[str, str] | None = None) -> tuple[str, ...]:
    """Appends :data:`XLA_CPU_FLAGS` to ``XLA_FLAGS`` in ``environ`` (default ``os.environ``).

    A flag whose name ``XLA_FLAGS`` already holds is left as the user set it, so setting e.g.
    ``--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`` yourself keeps XLA's default.
    Nothing is added on a jaxlib outside the versions the flags are known to (XLA would abort on an
    unknown flag). Warns, and still edits ``environ``, when JAX's backend is already running: the
    flags then apply to subprocesses only.

    Returns:
      The flags added (empty if none).
    """
    environ = os.environ if environ is None else environ
    if _jaxlib_version() not in _KNOWN_JAXLIB:
        return ()
    current = environ.get("XLA_FLAGS", "").split()
    present = {flag_name(f) for f in current}
    added = tuple(f for f in XLA_CPU_FLAGS if flag_name(f) not in present)
    if not added:
        return ()
    environ["XLA_FLAGS"] = " ".join(current + list(added))
    if environ is os.environ and _backend_started():
        warnings.warn("configure_xla_cpu() ran after JAX started its backend; XLA_FLAGS changes only "
                      "reach new processes. Call it before the first JAX computation.", stacklevel=2)
    return added
