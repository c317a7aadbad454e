"""gen_jax.train.configure_xla_cpu: what it adds to XLA_FLAGS, and that XLA obeys it."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from gen_jax.train import XLA_CPU_FLAGS, configure_xla_cpu, platform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def test_adds_the_flags_once_and_keeps_the_users():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert configure_xla_cpu(env) == XLA_CPU_FLAGS
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2", *XLA_CPU_FLAGS]
    assert configure_xla_cpu(env) == ()  # idempotent
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2", *XLA_CPU_FLAGS]
    mine = {"XLA_FLAGS": f"{YNN_FLAG}=+individual_convolution"}
    assert configure_xla_cpu(mine) == ()  # a flag the user set by name wins
    assert mine["XLA_FLAGS"] == f"{YNN_FLAG}=+individual_convolution"
    empty = {}
    configure_xla_cpu(empty)
    assert empty["XLA_FLAGS"].split() == list(XLA_CPU_FLAGS)


def test_leaves_unknown_jaxlib_versions_alone(monkeypatch):
    monkeypatch.setattr(platform, "_jaxlib_version", lambda: (9, 0))
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert configure_xla_cpu(env) == ()
    assert env == {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


def test_warns_when_the_backend_already_runs(monkeypatch):
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()  # the backend is up in this process
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    with pytest.warns(UserWarning, match="before the first JAX computation"):
        assert configure_xla_cpu() == XLA_CPU_FLAGS


def test_the_one_private_jax_import_is_still_there():
    """platform._backend_started reads jax._src.xla_bridge.backends_are_initialized (JAX has no public
    API for it) and falls back to False if the import fails: this fails loudly when JAX moves it."""
    import jax.numpy as jnp
    from jax._src import xla_bridge

    assert callable(xla_bridge.backends_are_initialized)
    jnp.zeros(1).block_until_ready()
    assert platform._backend_started() is True


_PROBE = textwrap.dedent("""
    import json, re, sys
    if sys.argv[1] == "configure":
        from gen_jax.train import configure_xla_cpu
        configure_xla_cpu()
    import jax, jax.numpy as jnp
    from jax import lax

    def loss(ws, x):
        for w in ws:
            x = jax.nn.relu(lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
        return jnp.mean(x ** 2)

    ws = [jnp.full((3, 3, 32, 64), 0.01), jnp.full((3, 3, 64, 64), 0.01)]
    hlo = jax.jit(jax.grad(loss)).lower(ws, jnp.ones((16, 14, 14, 32))).compile().as_text()
    bodies = {m.group(1): m.group(2) for m in re.finditer(r"^%?(\\S+) \\(.*?\\{\\n(.*?)\\n\\}", hlo, re.S | re.M)}
    ynn = re.findall(r"calls=%?([\\w.\\-]+), [^\\n]*__ynn_fusion", hlo)
    print(json.dumps({"convs": hlo.count("convolution("),
                      "ynn_convs": sum(bodies.get(c, "").count("convolution(") for c in ynn)}))
""")


def test_convolutions_leave_ynnpack_with_the_flags():
    """The compiled gradient of a two-layer conv net: XLA's defaults put its convolutions in YNNPACK
    fusions (the control, so the check can fail); with configure_xla_cpu() none is left there. The
    jaxlib pinned in requirements.txt must be one the flags were measured on: upgrading it without
    re-measuring (and extending platform._KNOWN_JAXLIB) fails here instead of silently dropping them."""
    assert platform._jaxlib_version() in platform._KNOWN_JAXLIB, platform._jaxlib_version()
    def probe(mode):
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
        out = subprocess.run([sys.executable, "-c", _PROBE, mode], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    default, configured = probe("default"), probe("configure")
    assert default["convs"] >= 3 and configured["convs"] >= 3  # forward, input and weight gradients
    assert default["ynn_convs"] > 0
    assert configured["ynn_convs"] == 0
