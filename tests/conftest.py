"""Strict JAX settings for every test: 4 fake CPU devices, gen_jax's XLA CPU flags (as the CLIs
run) plus the tests' fast-compile flag, no implicit rank promotion, and the session's shared compilation
cache (both in tests/subprocess_env.py)."""

import os

from subprocess_env import CACHE_DIR, xla_flags

os.environ.setdefault("XLA_FLAGS", xla_flags(4))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from gen_jax.train import configure_xla_cpu  # noqa: E402

configure_xla_cpu()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

from experiments.benchmark.timing import configure_jax  # noqa: E402

configure_jax(CACHE_DIR)


@pytest.fixture
def key():
    return jax.random.key(0)
