"""Strict JAX settings for every test: 4 fake CPU devices, gen_jax's XLA CPU flags (as the CLIs
run), and no implicit rank promotion."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from gen_jax.train import configure_xla_cpu  # noqa: E402

configure_xla_cpu()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)
