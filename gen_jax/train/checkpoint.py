"""Checkpointing with orbax's ``CheckpointManager``: atomic writes, keep-last-N, verified restores.

A checkpoint holds the whole training state (params, optimizer state, step, PRNG key, EMA, batch
stats) plus a JSON record describing the run: its ``run_info`` (e.g. the family), the dtype and shape
of every leaf, and a digest of every leaf's bytes. Once orbax has committed the step, a *seal*
(``SEAL_FILE`` in the step folder) records the size and digest of every file orbax wrote.

Restoring verifies both: a file that changed, vanished or was truncated, and an array whose bytes
differ from the digest taken when it was saved, make the checkpoint *corrupt*
(:class:`CorruptCheckpointError`, naming the step, the file and the leaf). A checkpoint whose seal is
missing although its record has digests was cut off between orbax's commit and the seal (a crash
mid-save) and is corrupt too. :meth:`Checkpointer.restore_latest_intact` then falls back to the
newest intact checkpoint and reports the corrupt ones, which :meth:`Checkpointer.quarantine` moves
aside (never deletes). A checkpoint of another model or family is *incompatible*
(:class:`CheckpointError` naming the first mismatch); nothing is ever overwritten silently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import os
import re
import sys
import tempfile
import time
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

SEAL_FILE = "gen_jax_seal.json"
QUARANTINE_DIR = "corrupt"  # sub-folder of the checkpoint directory holding corrupt steps, moved aside
_ALGORITHM = "blake2b-128"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: missing, or incompatible with the current configuration."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's files or arrays differ from what was saved (or it was never completely written).

    Attributes:
      step: the step of the checkpoint.
      path: its folder.
      problems: one line per problem found (changed files, changed leaves, unreadable parts).
    """

    def __init__(self, step: int, path: str, problems: list[str]):
        self.step, self.path, self.problems = step, path, list(problems)
        super().__init__(f"checkpoint {path} (step {step}) is corrupt: " + "; ".join(self.problems))


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


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _host_bytes(x) -> bytes | None:
    """The bytes of a whole array as this process holds them; None for an array sharded over several
    processes (each holds only part of it; the seal's file digests still cover it)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.sharding.is_fully_replicated:
            return None
        x = x.addressable_data(0)
    a = np.ascontiguousarray(np.asarray(jax.device_get(x)))
    return f"{a.dtype.str}{a.shape}".encode() + a.tobytes()


def leaf_digests(state: Any) -> dict[str, str]:
    """``{leaf path: digest}`` of the bytes, dtype and shape of every array leaf of ``state`` (PRNG keys
    as their raw data); leaves sharded over several processes are left out."""
    flat = jax.tree_util.tree_flatten_with_path(_unwrap_keys(state))[0]
    out = {}
    for p, x in flat:
        data = _host_bytes(x)
        if data is not None:
            out[jax.tree_util.keystr(p)] = _digest(data)
    return out


def _file_digests(step_dir: str) -> dict[str, list]:
    """``{relative path: [size, digest]}`` of every file under ``step_dir`` but the seal."""
    out = {}
    for root, _, files in os.walk(step_dir):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, step_dir)
            if rel == SEAL_FILE:
                continue
            h = hashlib.blake2b(digest_size=16)
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
            out[rel] = [os.path.getsize(path), h.hexdigest()]
    return dict(sorted(out.items()))


def _seal_body(files: dict) -> str:
    return json.dumps({"algorithm": _ALGORITHM, "files": files}, sort_keys=True)


def _write_seal(step_dir: str) -> None:
    body = _seal_body(_file_digests(step_dir))
    record = json.dumps({"seal": json.loads(body), "digest": _digest(body.encode())}, indent=1)
    tmp = os.path.join(step_dir, SEAL_FILE + ".tmp")
    with open(tmp, "w") as f:
        f.write(record)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(step_dir, SEAL_FILE))


def _check_seal(step_dir: str) -> list[str] | None:
    """Problems of the files of ``step_dir`` against its seal; None if there is no seal."""
    path = os.path.join(step_dir, SEAL_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        body = _seal_body(record["seal"]["files"])
        if record["seal"].get("algorithm") != _ALGORITHM or record["digest"] != _digest(body.encode()):
            raise ValueError("its own digest does not match")
        saved = record["seal"]["files"]
    except Exception as e:  # noqa: BLE001 -- any damage to the seal makes it useless
        return [f"its seal {SEAL_FILE} is damaged ({type(e).__name__}: {e})"]
    now = _file_digests(step_dir)
    problems = []
    for rel, (size, digest) in saved.items():
        if rel not in now:
            problems.append(f"file {rel} is missing")
        elif now[rel][0] != size:
            problems.append(f"file {rel} has {now[rel][0]} bytes, {size} when saved")
        elif now[rel][1] != digest:
            problems.append(f"file {rel} changed since it was saved (digest mismatch)")
    if len(problems) > 3:
        problems = problems[:2] + [f"{len(problems) - 2} more files differ from what was saved"]
    return problems


@contextlib.contextmanager
def _quiet_stderr():
    """Silences what orbax and tensorstore print (from their own threads, to file descriptor 2) while they
    fail to decode damaged data: the failure is reported once, in the CorruptCheckpointError."""
    sys.stderr.flush()
    saved_fd, saved_hook = os.dup(2), sys.unraisablehook
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        sys.unraisablehook = lambda *_: None  # coroutines of the failed read, collected below
        try:
            yield
        finally:
            time.sleep(0.1)  # tensorstore's threads report a failed read a little later
            gc.collect()
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            sys.unraisablehook = saved_hook


_STRUCTURE_MISMATCH = "tree structures do not match"


def _mismatch_blocks(message: str) -> list[tuple[str, str, str]]:
    """``(node, source, target)`` per node of orbax's structure-mismatch message (e.g. ``'g.loss_scale'``;
    ``Source`` is the restore target, ``Target`` the saved tree, ``'MISSING'`` where a side lacks the node)."""
    blocks = re.findall(r"^(\S[^\n]*):\n\s*- Source: ([^\n]*)\n\s*- Target: ([^\n]*)", message, re.M)
    return [(name, src.strip(), tgt.strip()) for name, src, tgt in blocks]


def _only_empty_fields_differ(message: str, template: Any) -> bool:
    """Whether every node of the mismatch is a field this run leaves empty (``None``), as a field added to
    the state after the checkpoint was written is for runs that do not use it."""
    empty = {jax.tree_util.keystr(p, simple=True, separator=".")
             for p, x in jax.tree_util.tree_flatten_with_path(template, is_leaf=lambda x: x is None)[0] if x is None}
    nodes = {name for name, _, _ in _mismatch_blocks(message)}
    return bool(nodes) and nodes <= empty


def _structure_difference(message: str) -> str:
    """The nodes only on disk / only in this run, from orbax's structure-mismatch message."""
    blocks = _mismatch_blocks(message)
    saved_only = [name for name, src, _ in blocks if src == "MISSING"]
    run_only = [name for name, _, tgt in blocks if tgt == "MISSING"]
    parts = ([f"saved, not in this run: {', '.join(saved_only)}"] if saved_only else []) + \
            ([f"in this run, not saved: {', '.join(run_only)}"] if run_only else [])
    return "; ".join(parts) or message.splitlines()[0][:300]


@dataclasses.dataclass
class Restored:
    """What :meth:`Checkpointer.restore_latest_intact` found.

    Attributes:
      state: the restored state (None if there was no checkpoint at all).
      info: the checkpoint's JSON record.
      step: the step restored (None if none).
      corrupt: the newer checkpoints that were skipped because they are corrupt, newest first.
    """

    state: Any
    info: dict
    step: int | None
    corrupt: list[CorruptCheckpointError]


class Checkpointer:
    """Saves and restores a training state under ``directory`` (orbax, atomic, keep-last-N, verified).

    Nothing is written until the first :meth:`save` (the directory is created then).

    Args:
      directory: where the step folders live.
      max_to_keep: number of most recent checkpoints kept.
      run_info: JSON-able description of the run (e.g. ``{'family': 'flow'}``) stored with every
        checkpoint and compared on restore.
    """

    def __init__(self, directory: str, *, max_to_keep: int = 3, run_info: dict | None = None):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep!r}")
        self.directory = os.path.abspath(directory)
        self.run_info = dict(run_info or {})
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=False,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, state: Any, extra: dict | None = None) -> None:
        """Writes and seals the checkpoint of ``step`` (atomically: a crash leaves the previous ones
        intact, and a checkpoint cut off before its seal is recognised as incomplete)."""
        os.makedirs(self.directory, exist_ok=True)
        info = {**self.run_info, "state": describe(state), "digest_algorithm": _ALGORITHM,
                "digests": leaf_digests(state), **(extra or {})}
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_unwrap_keys(state)), info=ocp.args.JsonSave(info)), force=True)
        self._manager.wait_until_finished()
        if jax.process_index() == 0:
            _write_seal(self.step_dir(step))

    def read_info(self, step: int) -> dict:
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(info=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises several types for unreadable files
            raise CorruptCheckpointError(step, self.step_dir(step),
                                         [f"its record is unreadable ({type(e).__name__}: {e})"]) from None
        return dict(out["info"])

    def _check_compatible(self, step: int, info: dict, template: Any) -> None:
        for k, v in self.run_info.items():  # keys an older checkpoint lacks are not compared
            if k in info and info[k] != v:
                raise CheckpointError(f"checkpoint {self.step_dir(step)} was written with {k}={info.get(k)!r} "
                                      f"but this run has {k}={v!r}")
        want, have = describe(template), info.get("state", {})
        if want != have:
            diff = sorted(set(want.items()) ^ set(have.items()))[:4]
            lines = [f"{p}: checkpoint {have.get(p, 'missing')}, this config {want.get(p, 'missing')}"
                     for p in dict.fromkeys(p for p, _ in diff)]
            raise CheckpointError(f"checkpoint {self.step_dir(step)} does not match the state this config "
                                  f"builds (other model shapes or config?): " + "; ".join(lines))

    def _load(self, step: int, template: Any) -> tuple[Any, dict]:
        """Verifies and restores ``step``: CorruptCheckpointError for damage, CheckpointError for a
        checkpoint of another model."""
        step_dir = self.step_dir(step)
        problems = _check_seal(step_dir)
        sealed = problems is not None
        problems = problems or []
        # Damaged files are still read, to name the leaves whose values changed; what orbax and tensorstore
        # print about them is silenced (the CorruptCheckpointError reports it once).
        with _quiet_stderr() if problems else contextlib.nullcontext():
            try:
                info = self.read_info(step)
            except CorruptCheckpointError as e:
                raise CorruptCheckpointError(step, step_dir, problems + e.problems) from None
            saved_digests = info.get("digests")
            if not sealed and saved_digests is not None:
                problems.append(f"it has no seal ({SEAL_FILE}): the save was cut off before it completed")
            elif not sealed:
                warnings.warn(f"checkpoint {step_dir} was written without integrity digests (by an older "
                              f"gen_jax): it is restored unverified", stacklevel=3)
            if not problems:
                self._check_compatible(step, info, template)  # an intact checkpoint of another model
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _unwrap_keys(template))
            try:
                try:
                    out = self._manager.restore(step, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract)))
                except ValueError as e:
                    if not (_STRUCTURE_MISMATCH in str(e) and _only_empty_fields_differ(str(e), template)):
                        raise
                    # Saved before an optional field (e.g. the loss scale) existed, by a run without it: the
                    # arrays on disk are all this run's, the field is restored empty.
                    out = {"state": ocp.PyTreeCheckpointer().restore(
                        os.path.join(step_dir, "state"), args=ocp.args.PyTreeRestore(
                            abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                            partial_restore=True))}
            except Exception as e:  # noqa: BLE001 -- orbax/tensorstore raise many types for damaged data
                if not problems and _STRUCTURE_MISMATCH in str(e):  # intact files of another state's structure
                    raise CheckpointError(f"checkpoint {step_dir} holds another state structure than this run "
                                          f"builds (saved by another gen_jax version or model): "
                                          f"{_structure_difference(str(e))}") from None
                raise CorruptCheckpointError(step, step_dir, problems + [
                    f"its arrays are unreadable ({type(e).__name__}: {str(e)[:300]})"]) from None
        if saved_digests is not None:
            now = leaf_digests(out["state"])
            changed = [p for p, d in saved_digests.items() if p in now and now[p] != d]
            if changed:
                problems.append("the values of leaf " + ", ".join(changed[:4]) +
                                (f" and {len(changed) - 4} more" if len(changed) > 4 else "") +
                                " differ from the digests taken when it was saved")
            elif problems:
                problems.append("every array read back equals what was saved (the damage is in "
                                "metadata), but a damaged checkpoint is not trusted")
        if problems:
            raise CorruptCheckpointError(step, step_dir, problems)
        # Orbax restores leaves of the template's structure; values of static fields come from it.
        return _rewrap_keys(out["state"], template), info

    def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict]:
        """Verifies and restores ``step`` (default: the latest) into the structure of ``template``.

        Raises:
          CorruptCheckpointError: its files or arrays differ from what was saved; the message names
            the step, the files and leaves, and the newest intact checkpoint if there is one.
          CheckpointError: nothing to restore, or a state that does not match ``template`` (other
            family, model shapes or config): the message names the mismatch.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        try:
            return self._load(step, template)
        except CorruptCheckpointError as e:
            older = [s for s in self.all_steps() if s < step]
            for s in reversed(older):
                try:
                    self._load(s, template)
                except CheckpointError:
                    continue
                e.args = (f"{e.args[0]}. The newest intact checkpoint is step {s}.",)
                break
            raise

    def restore_latest_intact(self, template: Any) -> Restored:
        """Restores the newest checkpoint that verifies, skipping (and reporting) corrupt newer ones.

        Returns a :class:`Restored` with ``state=None`` if there is no checkpoint.

        Raises:
          CheckpointError: every checkpoint is corrupt (the message lists them), or the newest intact
            one is of another model or family.
        """
        corrupt = []
        for step in reversed(self.all_steps()):
            try:
                state, info = self._load(step, template)
            except CorruptCheckpointError as e:
                corrupt.append(e)
                continue
            return Restored(state, info, step, corrupt)
        if corrupt:
            raise CheckpointError(f"every checkpoint in {self.directory} is corrupt: " +
                                  " | ".join(f"step {e.step}: {'; '.join(e.problems)}" for e in corrupt))
        return Restored(None, {}, None, [])

    def quarantine(self, step: int) -> str:
        """Moves the folder of ``step`` to ``<directory>/corrupt/`` (kept for inspection, out of the
        way of new checkpoints); returns its new path."""
        dest_dir = os.path.join(self.directory, QUARANTINE_DIR)
        os.makedirs(dest_dir, exist_ok=True)
        dest, n = os.path.join(dest_dir, str(step)), 1
        while os.path.exists(dest):
            dest, n = os.path.join(dest_dir, f"{step}.{n}"), n + 1
        os.replace(self.step_dir(step), dest)
        self._manager.reload()
        return dest

    def close(self) -> None:
        self._manager.close()
