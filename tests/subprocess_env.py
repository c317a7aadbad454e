"""How every test process compiles: XLA flags, one persistent compilation cache for the whole pytest
session, and the environment of the tests that run the CLI in a subprocess (CPU, a chosen number of fake
devices, the same flags and cache).

Compiling is most of the suite's time (about 4/5 of its CPU time on 2 cores), so the tests spend less on it
in two ways. ``TEST_XLA_FLAGS`` turn LLVM's backend optimisations off: XLA CPU then compiles in about half
the time (ddpm_mnist's train step 26 -> 14 s) and runs the few steps a test takes slower; results differ
from the default's at float32 rounding level, the mathematics tested is the same. The CLIs and the
benchmark keep XLA's default.

The same programs compile again and again across the suite: a family's train step in its unit test, its
smoke run and its CLI run; a subprocess started twice (train, then resume; uninterrupted, killed, rerun).
With the cache only the first compiles (the others are ~0.1 s disk reads). It is JAX's own cache
(``JAX_COMPILATION_CACHE_DIR``, every program however fast it compiles); a user can set the same variables.
The directory is made by the first process that imports this module (pytest's main process, before
pytest-xdist starts its workers), shared with its workers and subprocesses through ``GEN_JAX_TEST_XLA_CACHE``
in the environment, and deleted when that process exits: every pytest run starts cold."""

import atexit
import os
import shutil
import tempfile

SHARED_CACHE_ENV = "GEN_JAX_TEST_XLA_CACHE"


def _session_cache_dir() -> str:
    inherited = os.environ.get(SHARED_CACHE_ENV)
    if inherited and os.path.isdir(inherited):
        return inherited
    path = tempfile.mkdtemp(prefix="gen_jax_tests_xla_cache_")
    os.environ[SHARED_CACHE_ENV] = path  # inherited by the workers and subprocesses started from now on
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


CACHE_DIR = _session_cache_dir()

#: XLA flags every test process runs with (tests/conftest.py, :func:`subprocess_env`).
TEST_XLA_FLAGS: tuple[str, ...] = ("--xla_backend_optimization_level=0",)


def xla_flags(devices: int) -> str:
    """``XLA_FLAGS`` for a test process with ``devices`` fake CPU devices."""
    return " ".join((f"--xla_force_host_platform_device_count={devices}", *TEST_XLA_FLAGS))


def subprocess_env(devices: int | None = None, **extra: str) -> dict[str, str]:
    """``os.environ`` plus CPU-only JAX, the session's compilation cache and, if ``devices`` is given, that
    many fake CPU devices (``XLA_FLAGS`` replaced by :func:`xla_flags`)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=CACHE_DIR,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    if devices is not None:
        env["XLA_FLAGS"] = xla_flags(devices)
    env.update(extra)
    return env
