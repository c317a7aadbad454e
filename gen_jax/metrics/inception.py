"""Inception-v3 in the FID variant (Heusel et al. 2017, as pytorch-fid and TTUR compute it), in Flax, for the
sample-quality numbers papers report: FID on the 2048-d pool3 features, the Inception Score on the 1008-way
logits (Salimans et al. 2016) and KID (Binkowski et al. 2018; :mod:`gen_jax.metrics.kernel`).

The network is the 2015-12-05 TensorFlow graph the FID was defined with, in pytorch-fid's layout:
torchvision's Inception-v3 without the auxiliary head, its average pools excluding the padding from the
count (``FIDInceptionA/C/E_1``), a max pool in the last block (``FIDInceptionE_2``), and a 1008-way
classifier. Images in ``[0, 1]`` are resized to 299 x 299 by bilinear interpolation (half-pixel centres,
no antialiasing: ``torch.nn.functional.interpolate(..., align_corners=False)``) and scaled to ``[-1, 1]``.
Grey images are repeated over three channels.

Nothing is downloaded: the weights come from a file the user supplies, converted once from pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth``::

    python -m gen_jax.metrics.inception pt_inception-2015-12-05-6726825d.pth inception_fid.npz

(the conversion reads the ``.pth`` with PyTorch, needed only for this step; the ``.npz`` then loads
without it). :func:`load_weights` checks every array's name and shape against this architecture.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from typing import Any, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from gen_jax.nn import Conv

PyTree = Any

#: The file pytorch-fid distributes the FID weights as (converted by this module's command line).
TORCH_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INPUT_SIZE = 299
POOL_DIM = 2048
NUM_LOGITS = 1008
CONVERT_COMMAND = f"python -m gen_jax.metrics.inception {TORCH_WEIGHTS_FILE} inception_fid.npz"


def _pad(padding) -> tuple[tuple[int, int], tuple[int, int]]:
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return (ph, ph), (pw, pw)


class BasicConv(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, running statistics) and ReLU: torchvision's
    ``BasicConv2d`` (submodules ``conv`` and ``bn``)."""

    features: int
    kernel: tuple[int, int] | int
    strides: int = 1
    padding: Any = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = (self.kernel, self.kernel) if isinstance(self.kernel, int) else self.kernel
        x = Conv(self.features, k, strides=(self.strides, self.strides), padding=_pad(self.padding),
                 use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    """3x3 average over the window's pixels inside the image (the FID blocks' ``count_include_pad=False``)."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(64, 1, name="branch1x1")(x)
        b5 = BasicConv(64, 5, padding=2, name="branch5x5_2")(BasicConv(48, 1, name="branch5x5_1")(x))
        b3 = BasicConv(64, 1, name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, 3, strides=2, name="branch3x3")(x)
        bd = BasicConv(64, 1, name="branch3x3dbl_1")(x)
        bd = BasicConv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, 3, strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c = self.channels_7x7
        b1 = BasicConv(192, 1, name="branch1x1")(x)
        b7 = BasicConv(c, 1, name="branch7x7_1")(x)
        b7 = BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv(c, 1, name="branch7x7dbl_1")(x)
        bd = BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, 1, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(192, 1, name="branch3x3_1")(x)
        b3 = BasicConv(320, 3, strides=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, 1, name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, 3, strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """``pool='avg'``: ``FIDInceptionE_1`` (Mixed_7b); ``'max'``: ``FIDInceptionE_2`` (Mixed_7c), the TF graph's
    max pool in the last block."""

    pool: str = "avg"

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(320, 1, name="branch1x1")(x)
        b3 = BasicConv(384, 1, name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv(448, 1, name="branch3x3dbl_1")(x)
        bd = BasicConv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        if self.pool == "avg":
            pooled = _avg_pool_3x3(x)
        else:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        bp = BasicConv(192, 1, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def preprocess(images: jax.Array, size: int | None = INPUT_SIZE) -> jax.Array:
    """``[B, H, W, C]`` uint8, or floats in ``[0, 1]``, C in {1, 3} -> float32 ``[B, size, size, 3]`` in
    ``[-1, 1]`` (bilinear, half-pixel centres, no antialiasing; ``size=None`` keeps H x W)."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must have shape [B, H, W, 1 or 3], got {images.shape}")
    x = images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images.astype(jnp.float32)
    if images.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    if size is not None and x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, 3), method="bilinear", antialias=False)
    return 2.0 * x - 1.0


class InceptionV3(nn.Module):
    """The FID Inception-v3 (module docstring). ``__call__`` takes images already :func:`preprocess`-ed
    (``[B, H, W, 3]`` in ``[-1, 1]``, H, W >= 75) and returns ``(pool3 [B, 2048], logits [B, 1008])``."""

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = BasicConv(32, 3, strides=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, 3, name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = BasicConv(80, 1, name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, 3, name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)
        pool3 = jnp.mean(x, axis=(1, 2))
        return pool3, nn.Dense(NUM_LOGITS, name="fc")(pool3)


def variable_shapes() -> dict:
    """``{'params': ..., 'batch_stats': ...}`` of :class:`InceptionV3` as shape structs (nothing computed)."""
    return jax.eval_shape(lambda: InceptionV3().init(jax.random.key(0), jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3))))


def num_parameters(*, with_logits: bool = True) -> int:
    """Trainable parameters (convolutions, batch-norm scales and offsets, and the 1008-way ``fc`` unless
    ``with_logits=False``); the batch norms' running statistics are not counted."""
    params = dict(variable_shapes()["params"])
    if not with_logits:
        params.pop("fc")
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


# --- weights: pytorch-fid's state dict -> a flat .npz of Flax variables ---------------------------------

_TORCH_LEAF = {"weight": ("params", "kernel"), "running_mean": ("batch_stats", "mean"),
               "running_var": ("batch_stats", "var")}


def _flax_key(torch_key: str) -> tuple[str, ...] | None:
    """``'Mixed_5b.branch1x1.bn.weight'`` -> ``('params', 'Mixed_5b', 'branch1x1', 'bn', 'scale')``; None for
    entries with no Flax counterpart (``num_batches_tracked``)."""
    *path, leaf = torch_key.split(".")
    if leaf == "num_batches_tracked":
        return None
    if path and path[-1] == "bn" and leaf == "weight":
        return ("params", *path, "scale")
    if leaf == "bias":
        return ("params", *path, "bias")
    if leaf not in _TORCH_LEAF:
        raise ValueError(f"unexpected entry {torch_key!r} in the Inception state dict")
    collection, name = _TORCH_LEAF[leaf]
    return (collection, *path, name)


def _to_flax_layout(value: np.ndarray) -> np.ndarray:
    """PyTorch ``[out, in, kh, kw]`` conv and ``[out, in]`` linear weights -> Flax ``[kh, kw, in, out]`` and
    ``[in, out]``."""
    if value.ndim == 4:
        return np.transpose(value, (2, 3, 1, 0))
    if value.ndim == 2:
        return value.T
    return value


def convert_state_dict(state_dict: Mapping[str, Any]) -> dict:
    """pytorch-fid's FID Inception state dict (names -> arrays) -> Flax variables
    ``{'params': ..., 'batch_stats': ...}`` of :class:`InceptionV3`, checked by :func:`check_variables`."""
    flat = {}
    for k, v in state_dict.items():
        key = _flax_key(k)
        if key is not None:
            flat[key] = _to_flax_layout(np.asarray(v, np.float32))
    variables = traverse_util.unflatten_dict(flat)
    check_variables(variables, source="the state dict")
    return variables


def check_variables(variables: Mapping, *, source: str) -> None:
    """Raises a ValueError naming ``source`` unless ``variables`` has exactly :class:`InceptionV3`'s arrays
    (names and shapes), all finite."""
    want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(variable_shapes(), sep="/").items()}
    have = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(dict(variables), sep="/").items()}
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if missing or extra or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                 f"{len(extra)} unexpected (e.g. {extra[:3]})" if extra else "",
                 f"{len(wrong)} of another shape (e.g. {wrong[0]}: {have[wrong[0]]}, expected {want[wrong[0]]})"
                 if wrong else ""]
        raise ValueError(f"{source} does not hold the FID Inception-v3: " + "; ".join(p for p in parts if p))
    bad = [k for k, v in traverse_util.flatten_dict(dict(variables), sep="/").items() if not np.all(np.isfinite(v))]
    if bad:
        raise ValueError(f"{source} has non-finite values in {bad[:3]}")


def write_npz(path: str, **arrays) -> str:
    """``np.savez(path, **arrays)`` atomically (a temporary file, then renamed): an interrupted write leaves no
    truncated file behind. Creates the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def save_weights(path: str, variables: Mapping) -> str:
    """Writes Flax variables to ``path`` as an ``.npz`` of ``'params/Mixed_5b/.../kernel'`` arrays (atomically)."""
    flat = traverse_util.flatten_dict(jax.device_get(dict(variables)), sep="/")
    return write_npz(path, **{k: np.asarray(v, np.float32) for k, v in flat.items()})


def load_weights(path: str | None) -> dict:
    """Reads the ``.npz`` written by the converter, checking it against the architecture.

    Raises:
      FileNotFoundError: no path given or no file there (the message names the expected file and the
        command that makes it).
      ValueError: the file is unreadable or holds another network.
    """
    if not path or not os.path.isfile(path):
        where = f"no file at {path}" if path else "no weights file was given"
        raise FileNotFoundError(
            f"FID/IS/KID need the FID Inception-v3 weights, and {where}. Get pytorch-fid's {TORCH_WEIGHTS_FILE} "
            f"(its release page; nothing is downloaded at run time) and convert it once: {CONVERT_COMMAND} "
            f"(needs torch for this step only); then pass the .npz, e.g. "
            f"--config.eval.inception_weights=inception_fid.npz")
    try:
        with np.load(path) as f:
            flat = {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001 -- zip/npy readers raise several types for a damaged file
        raise ValueError(f"Inception weights {path} are unreadable ({type(e).__name__}: {e}); convert them again: "
                         f"{CONVERT_COMMAND}") from None
    variables = traverse_util.unflatten_dict(flat, sep="/")
    check_variables(variables, source=f"Inception weights {path}")
    return variables


def file_digest(path: str) -> str:
    """sha256 of a file (first 16 hex digits): what cached reference statistics record of the weights."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# --- features, batched under jit over every device --------------------------------------------------------

class InceptionFeatures:
    """``features(images) -> (pool3 [N, 2048], logits [N, 1008])`` as float32 numpy, computed in fixed-size
    batches by one compiled program (the last batch padded, so nothing retraces) with the batch split over
    the devices of ``mesh`` (default: every device) and the weights replicated.

    Args:
      variables: from :func:`load_weights` (or :func:`convert_state_dict`, or a random init for tests).
      batch_size: images per call (rounded up to a multiple of the device count).
      size: the input side (299, the FID protocol; smaller values only for tests).
    """

    def __init__(self, variables: Mapping, *, batch_size: int = 200, size: int | None = INPUT_SIZE,
                 mesh=None):
        from gen_jax.train.parallel import make_mesh, replicate

        self.mesh = make_mesh() if mesh is None else mesh
        n_dev = self.mesh.devices.size
        self.batch_size = -(-max(int(batch_size), 1) // n_dev) * n_dev
        self.size = size
        self.variables = replicate(jax.tree.map(jnp.asarray, dict(variables)), self.mesh)
        self._apply = jax.jit(self._forward)

    def _forward(self, variables, x):
        with jax.default_matmul_precision("highest"):  # float32 convolutions on every backend (TPUs, TF32 GPUs)
            return InceptionV3().apply(variables, preprocess(x, self.size))

    def __call__(self, images: np.ndarray | Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        from gen_jax.train.parallel import shard_batch

        chunks = [images] if isinstance(images, (np.ndarray, jax.Array)) else images
        pools, logits = [], []
        for chunk in chunks:
            chunk = np.asarray(chunk)
            for i in range(0, len(chunk), self.batch_size):
                x = chunk[i:i + self.batch_size]
                n = len(x)
                if n < self.batch_size:
                    x = np.concatenate([x, np.repeat(x[-1:], self.batch_size - n, axis=0)])
                p, lg = self._apply(self.variables, shard_batch(x, self.mesh))
                pools.append(np.asarray(p)[:n])
                logits.append(np.asarray(lg)[:n])
        if not pools:
            raise ValueError("no images to compute Inception features of")
        return np.concatenate(pools), np.concatenate(logits)


# --- the command line: convert pytorch-fid's weights --------------------------------------------------------

def _read_torch(path: str) -> dict:
    try:
        import torch
    except ImportError:
        raise SystemExit(f"reading {path} needs PyTorch (only for this one-time conversion): "
                         f"pip install torch") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gen_jax.metrics.inception",
        description=f"Convert pytorch-fid's FID Inception weights ({TORCH_WEIGHTS_FILE}) to the .npz gen_jax loads.")
    parser.add_argument("source", help=f"the PyTorch state dict ({TORCH_WEIGHTS_FILE})")
    parser.add_argument("out", help="the .npz to write (e.g. inception_fid.npz)")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.source):
        raise SystemExit(f"no file at {args.source}; expected pytorch-fid's {TORCH_WEIGHTS_FILE}")
    variables = convert_state_dict(_read_torch(args.source))
    save_weights(args.out, variables)
    n = sum(int(np.prod(np.shape(v))) for v in jax.tree.leaves(variables["params"]))
    print(f"wrote {args.out}: {n:,} parameters (pool3 + 1008-way logits), sha256 {file_digest(args.out)}")


if __name__ == "__main__":
    main()
