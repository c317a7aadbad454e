"""Checkpointing with orbax's ``CheckpointManager``: atomic writes, keep-last-N, clear errors.

A checkpoint holds the whole training state (params, optimizer state, step, PRNG key, EMA, batch
stats) plus a JSON record describing the run (family and the shapes of every leaf). Restoring checks
that record against the state the current config builds, so a checkpoint of another model or family
is refused with a message naming the first mismatch, and a truncated or corrupted checkpoint is
reported as such; neither is ever overwritten silently.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: unreadable, or incompatible with the current configuration."""


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _unwrap_keys(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _rewrap_keys(restored: Any, template: Any) -> Any:
    return jax.tree.map(lambda r, t: jax.random.wrap_key_data(r, impl=jax.random.key_impl(t))
                        if _is_key(t) else r, restored, template)


def describe(state: Any) -> dict[str, str]:
    """``{leaf path: 'dtype[shape]'}`` for every array leaf of ``state`` (keys as their raw data)."""
    flat = jax.tree_util.tree_flatten_with_path(_unwrap_keys(state))[0]
    return {jax.tree_util.keystr(p): f"{np.dtype(x.dtype).name}{list(np.shape(x))}" for p, x in flat}


class Checkpointer:
    """Saves and restores a training state under ``directory`` (orbax, atomic, keep-last-N).

    Args:
      directory: where the step folders live (created if missing).
      max_to_keep: number of most recent checkpoints kept.
      run_info: JSON-able description of the run (e.g. ``{'family': 'flow'}``) stored with every
        checkpoint and compared on restore.
    """

    def __init__(self, directory: str, *, max_to_keep: int = 3, run_info: dict | None = None):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep!r}")
        self.directory = os.path.abspath(directory)
        self.run_info = dict(run_info or {})
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, extra: dict | None = None) -> None:
        """Writes the checkpoint of ``step`` (atomically: a crash leaves the previous ones intact)."""
        info = {**self.run_info, "state": describe(state), **(extra or {})}
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_unwrap_keys(state)), info=ocp.args.JsonSave(info)), force=True)
        self._manager.wait_until_finished()

    def read_info(self, step: int) -> dict:
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(info=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises several types for unreadable files
            raise CheckpointError(f"checkpoint {self.directory}/{step} is unreadable (corrupted or "
                                  f"truncated?): {type(e).__name__}: {e}. Restore a good copy, or start "
                                  f"over with --restart (which deletes {self.directory}).") from None
        return dict(out["info"])

    def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores ``step`` (default: latest) into the structure of ``template``.

        Raises:
          CheckpointError: nothing to restore, unreadable data, or a state that does not match
            ``template`` (other family, model shapes or config): the message names the mismatch.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        info = self.read_info(step)
        for k, v in self.run_info.items():
            if info.get(k) != v:
                raise CheckpointError(f"checkpoint {self.directory}/{step} was written with {k}={info.get(k)!r} "
                                      f"but this run has {k}={v!r}; use another workdir or --restart")
        want, have = describe(template), info.get("state", {})
        if want != have:
            diff = sorted(set(want.items()) ^ set(have.items()))[:4]
            lines = [f"  {p}: checkpoint {have.get(p, 'missing')}, this config {want.get(p, 'missing')}"
                     for p in dict.fromkeys(p for p, _ in diff)]
            raise CheckpointError(f"checkpoint {self.directory}/{step} does not match the state this config "
                                  f"builds (other model shapes or config?):\n" + "\n".join(lines) +
                                  "\nUse another workdir, or --restart to discard the checkpoint.")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _unwrap_keys(template))
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        except Exception as e:
            raise CheckpointError(f"checkpoint {self.directory}/{step} is unreadable (corrupted or truncated?): "
                                  f"{type(e).__name__}: {e}. Restore a good copy, or start over with "
                                  f"--restart (which deletes {self.directory}).") from None
        state = _rewrap_keys(out["state"], template)
        # Orbax restores leaves of the template's structure; values of static fields come from it.
        return state, info

    def close(self) -> None:
        self._manager.close()
