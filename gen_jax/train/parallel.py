"""Data parallelism with ``jax.jit`` + ``NamedSharding`` over a 1D device mesh (no pmap).

The batch is sharded along the mesh's ``'data'`` axis and the training state is replicated
(:func:`replicate`); the compiled step then computes per-device gradients and XLA inserts the
all-reduce. One device is the degenerate case of the same code path. With several processes
(``jax.distributed``), each process passes its local rows and :func:`shard_batch` assembles the global
batch. For models whose state does not fit on every device, :func:`shard_state` shards the large
parameters and their optimizer moments along the same axis (FSDP / ZeRO-3 style): the step is
unchanged, and XLA's SPMD partitioner gathers each parameter where it is used and reduce-scatters its
gradient.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1D mesh over ``devices`` (default: every device of every process) with axis ``'data'``."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raises a ValueError unless the global batch splits evenly over the mesh's devices."""
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(f"batch size {batch_size} is not divisible by the number of devices {n}; "
                         f"use a multiple of {n} (e.g. {max(n, batch_size // n * n)})")


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of ``tree`` on all devices of ``mesh`` (replicated).

    With several processes every process passes the same values (same seed, or the same restored
    checkpoint) and each places them on its own devices.
    """
    return _place(tree, lambda x: NamedSharding(mesh, P()))


def shard_state(tree: Any, mesh: Mesh, min_size: int = 2**14) -> Any:
    """Like :func:`replicate`, but every array leaf with at least ``min_size`` elements is split along
    its largest axis that the device count divides (FSDP): each device then holds ``1/N`` of the large
    parameters, their optimizer moments and EMA. Small or indivisible leaves stay replicated.
    """
    n = mesh.devices.size

    def sharding(x):
        shape = np.shape(x)
        if n == 1 or np.prod(shape, dtype=np.int64) < min_size:
            return NamedSharding(mesh, P())
        axes = [a for a in np.argsort(shape)[::-1] if shape[a] % n == 0]
        if not axes:
            return NamedSharding(mesh, P())
        spec = [None] * len(shape)
        spec[axes[0]] = DATA_AXIS
        return NamedSharding(mesh, P(*spec))

    return _place(tree, sharding)


def keep_state_sharding(step, state: Any, mesh: Mesh):
    """``step`` compiled so that the state it returns has exactly the shardings of ``state`` (as
    placed by :func:`replicate` or :func:`shard_state`) and the metrics are replicated.

    Without this the partitioner may choose other output shardings (e.g. shard a small bias that was
    replicated), and the next call, seeing new input shardings, would compile the step again.
    """
    shardings = jax.tree.map(lambda x: x.sharding, state)
    return jax.jit(step, out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=(0,))


def _place(tree: Any, sharding_of) -> Any:
    if jax.process_count() == 1:
        return jax.tree.map(lambda x: jax.device_put(x, _key_or(sharding_of, x)), tree)

    def put(x):
        if _is_key(x):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding_of(x), lambda index: x[index])

    return jax.tree.map(put, tree)


def _key_or(sharding_of, x):
    """Typed PRNG keys are tiny: always replicated."""
    return sharding_of(np.zeros(())) if _is_key(x) else sharding_of(x)


def shard_batch(batch: Any, mesh: Mesh, batch_axis: int = 0) -> Any:
    """Assembles the global batch from this process's local rows, sharded along ``batch_axis``."""
    spec = P(*([None] * batch_axis), DATA_AXIS)
    sharding = NamedSharding(mesh, spec)
    if jax.process_count() == 1:  # no host round trip for batches made on device
        return jax.device_put(batch, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Joins a multi-process run (``jax.distributed.initialize``); call before any other JAX work.

    With no arguments JAX reads the cluster from the environment (Cloud TPU, Slurm, Open MPI, ...).
    On CPU, cross-process collectives use gloo.
    """
    if (num_processes is None) != (process_id is None):
        raise ValueError("num_processes and process_id must be given together "
                         f"(got num_processes={num_processes!r}, process_id={process_id!r})")
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id!r}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)


def local_replica(tree: Any) -> Any:
    """This process's full copy of a pytree placed by :func:`replicate` or :func:`shard_state`, on one
    local device: replicated leaves without communication, sharded leaves gathered.

    Sampling and evaluation then run per process without a cross-process collective.
    """
    device = jax.local_devices()[0]

    def one(x):
        if not isinstance(x, jax.Array):
            return x
        if x.is_fully_replicated:
            return x.addressable_data(0)
        if not x.is_fully_addressable:  # sharded across processes: every process gathers it
            from jax.experimental import multihost_utils

            return jax.device_put(multihost_utils.process_allgather(x, tiled=True), device)
        return jax.device_put(x, device)

    return jax.tree.map(one, tree)
