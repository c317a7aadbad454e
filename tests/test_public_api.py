"""Every name a subpackage exports in __all__ exists (the public surface stays importable)."""

import importlib

import pytest

SUBPACKAGES = ["gen_jax.train", "gen_jax.data", "gen_jax.metrics", "gen_jax.flows", "gen_jax.diffusion",
               "gen_jax.vae", "gen_jax.gan", "gen_jax.nn"]


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_exported_names_exist(name):
    module = importlib.import_module(name)
    assert module.__all__, f"{name} exports nothing"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing attributes: {missing}"
