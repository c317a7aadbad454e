"""Helpers shared by the flow tests (bijectors and whole models)."""

import jax
import pytest
from jax.flatten_util import ravel_pytree


@pytest.fixture
def key():
    # The test math does not depend on the PRNG; rbg keys compile ~5x faster than threefry on CPU.
    return jax.random.key(0, impl="unsafe_rbg")


def perturb(variables, key, scale):
    """Adds N(0, scale^2) noise to every parameter (trained-looking, not zero-init, parameters)."""
    flat, unravel = ravel_pytree(variables)
    return unravel(flat + scale * jax.random.normal(key, flat.shape, flat.dtype))
