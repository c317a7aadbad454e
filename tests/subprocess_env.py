"""The environment of the tests that run the CLI in a subprocess: CPU, a chosen number of fake devices,
and one persistent XLA compilation cache shared by every subprocess of this pytest session.

Several tests start the same program more than once (train, then resume; uninterrupted, killed, rerun):
with the cache only the first start compiles. It is JAX's own cache (``JAX_COMPILATION_CACHE_DIR``);
a user can set the same variables. The directory is deleted when pytest exits."""

import atexit
import os
import shutil
import tempfile

CACHE_DIR = tempfile.mkdtemp(prefix="gen_jax_tests_xla_cache_")
atexit.register(shutil.rmtree, CACHE_DIR, ignore_errors=True)


def subprocess_env(devices: int | None = None, **extra: str) -> dict[str, str]:
    """``os.environ`` plus CPU-only JAX, the shared compilation cache (every program, however fast it
    compiles) and, if ``devices`` is given, that many fake CPU devices (replacing ``XLA_FLAGS``)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=CACHE_DIR,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.update(extra)
    return env
