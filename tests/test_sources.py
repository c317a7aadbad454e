"""Data sources and the grain pipeline: every backend reads exactly the examples it holds, the order is the
documented pure function of (seed, step) whatever the streaming, memory holds only what a step reads, the
fingerprint tells data apart, and bad data are refused naming the file and the problem."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from gen_jax.data import ArraySource, Batches, DataError, NpySource, open_source
from gen_jax.data.sources import center_crop_resize


def _images(n=30, h=8, w=6, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w, c), dtype=np.uint8), rng.integers(0, 4, n).astype(np.int32)


def _everything(source):
    b = source.read_all(chunk=7)  # several chunks
    return b["x"], b["label"]


def test_npy_npz_and_arrays_read_the_same_examples(tmp_path):
    x, y = _images()
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "single.npz", x=x, y=y)
    np.savez(tmp_path / "keras.npz", x_train=x[:20], y_train=y[:20], x_test=x[20:], y_test=y[20:])
    np.testing.assert_array_equal(_everything(NpySource(str(tmp_path / "x.npy")))[0], x)
    keras = open_source(str(tmp_path / "keras.npz"))
    np.testing.assert_array_equal(_everything(keras.train)[0], x[:20])
    np.testing.assert_array_equal(_everything(keras.test)[1], y[20:])
    assert keras.train.num_classes == 4 and keras.train.kind == "image" and keras.train.shape == (8, 6, 3)
    # No test split: a fixed 10 % holdout, disjoint from the training rows, the same for every run.
    for name in ("x.npy", "single.npz"):
        s = open_source(str(tmp_path / name))
        (xtr, _), (xte, _) = _everything(s.train), _everything(s.test)
        assert len(xtr) == 27 and len(xte) == 3
        rows = {r.tobytes() for r in np.concatenate([xtr, xte])}
        assert rows == {r.tobytes() for r in x}
        np.testing.assert_array_equal(_everything(open_source(str(tmp_path / name)).test)[0], xte)
    assert open_source(str(tmp_path / "single.npz")).train.num_classes == 4
    assert open_source(str(tmp_path / "x.npy")).train.num_classes == 0  # no labels


def test_grayscale_npy_without_channel_axis_and_points(tmp_path):
    x, _ = _images(c=1)
    np.save(tmp_path / "gray.npy", x[..., 0])
    s = NpySource(str(tmp_path / "gray.npy"))
    assert s.shape == (8, 6, 1)
    np.testing.assert_array_equal(s.read(np.array([4, 2]))["x"], x[[4, 2]])
    pts = np.random.default_rng(1).normal(size=(50, 3))
    np.save(tmp_path / "pts.npy", pts)
    p = NpySource(str(tmp_path / "pts.npy"))
    assert p.kind == "points" and p.shape == (3,)
    np.testing.assert_allclose(p.read(np.array([7]))["x"][0], pts[7].astype(np.float32))


def _write_folder(root, x, labels=None):
    for i, img in enumerate(x):
        sub = root if labels is None else root / f"class_{'ab'[labels[i]]}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(sub / f"{i:03d}.png")


def test_image_folder_with_class_folders_and_splits(tmp_path):
    x, y = _images(n=12)
    y = y % 2
    _write_folder(tmp_path / "flat", x)
    _write_folder(tmp_path / "classes", x, y)
    _write_folder(tmp_path / "split" / "train", x[:8], y[:8])
    _write_folder(tmp_path / "split" / "test", x[8:], y[8:])
    flat = open_source(str(tmp_path / "flat"))
    got = np.concatenate([_everything(flat.train)[0], _everything(flat.test)[0]])
    assert {r.tobytes() for r in got} == {r.tobytes() for r in x} and flat.train.num_classes == 0
    classes = open_source(str(tmp_path / "classes"))
    for s in (classes.train, classes.test):
        xs, ls = _everything(s)
        for img, label in zip(xs, ls):  # each image carries the label of its folder
            i = next(i for i in range(12) if np.array_equal(x[i], img))
            assert label == y[i]
    split = open_source(str(tmp_path / "split"))
    assert len(split.train) == 8 and len(split.test) == 4
    assert {r.tobytes() for r in _everything(split.test)[0]} == {r.tobytes() for r in x[8:]}


def test_center_crop_resize():
    x = np.zeros((10, 20, 1), np.uint8)
    x[:, 5:15] = 200  # the centred 10x10 square is uniform: cropping keeps only it
    np.testing.assert_array_equal(center_crop_resize(x, 10), x[:, 5:15])
    small = center_crop_resize(x, 4)
    assert small.shape == (4, 4, 1) and np.all(small == 200)
    big = np.repeat(np.repeat(np.arange(4, dtype=np.uint8)[:, None] * 60, 4, 0), 4, 1)[..., None]  # 16x4 stripes
    stripes = center_crop_resize(np.repeat(big, 4, 1)[:, :16], 4)[:, 0, 0].astype(int)  # bicubic: within 6
    np.testing.assert_allclose(stripes, [0, 60, 120, 180], atol=6)


def test_any_tfds_image_dataset_by_name_with_resizing():
    with tfds.testing.mock_data(num_examples=20):
        s = open_source("cifar10")
        assert s.train.shape == (32, 32, 3) and s.train.num_classes == 10 and len(s.train) == 20
        r = open_source("cifar10", image_size=16)
        assert r.train.shape == (16, 16, 3) and r.train.read(np.arange(3))["x"].shape == (3, 16, 16, 3)
        assert r.train.fingerprint()["sha256"] != s.train.fingerprint()["sha256"]
        part = open_source("fashion_mnist", train_split="train[:50%]")
        assert part.train.shape == (28, 28, 1)  # (mock_data ignores the slice)


def test_tfds_images_of_varying_sizes_need_an_image_size():
    with tfds.testing.mock_data(num_examples=6):
        with pytest.raises(DataError, match="'oxford_flowers102' has images of varying sizes; choose one with "
                                            "data.image_size"):
            open_source("oxford_flowers102")
        s = open_source("oxford_flowers102", image_size=32)
        assert s.train.shape == (32, 32, 3) and s.train.read(np.arange(3))["x"].shape == (3, 32, 32, 3)
        celeb = open_source("celeb_a", image_size=64)  # fixed 218x178 images, no label
        assert celeb.train.shape == (64, 64, 3) and celeb.train.num_classes == 0


def test_batches_follow_the_documented_order_streamed_or_not():
    x, y = _images(n=40)
    src = ArraySource(x, y)
    b = Batches(src, 8, seed=5, num_threads=2, prefetch=3)
    it = b(3)
    for step in range(3, 14):  # across an epoch boundary (5 steps per epoch)
        epoch, k = divmod(step, 5)
        rows = np.random.default_rng([5, epoch]).permutation(40)[k * 8:(k + 1) * 8]
        got = next(it)
        np.testing.assert_array_equal(got["x"], x[rows])
        np.testing.assert_array_equal(got["label"], y[rows])
    direct = Batches(src, 8, seed=5, num_threads=0)
    np.testing.assert_array_equal(next(direct(9))["x"], b.batch_at(9)["x"])
    evaluation = list(Batches(src, 16, shuffle=False).epoch())
    assert len(evaluation) == 2 and np.array_equal(np.concatenate([e["x"] for e in evaluation]), x[:32])


def test_worker_processes_give_the_same_batches(tmp_path):
    x, y = _images(n=40)
    np.save(tmp_path / "x.npy", x)
    src = NpySource(str(tmp_path / "x.npy"), labels=y)
    threads = Batches(src, 8, seed=2)(4)
    workers = Batches(src, 8, seed=2, num_workers=2, prefetch=4)(4)
    for _ in range(6):
        a, b = next(threads), next(workers)
        np.testing.assert_array_equal(a["x"], b["x"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_random_flip_is_a_pure_function_of_seed_and_step_and_independent_of_processes():
    x, y = _images(n=64)
    src = ArraySource(x, y)
    plain = Batches(src, 32, seed=1)
    flipped = Batches(src, 32, seed=1, random_flip=True)
    a, f = plain.batch_at(3)["x"], flipped.batch_at(3)["x"]
    is_flipped = [np.array_equal(fi, ai[:, ::-1]) and not np.array_equal(fi, ai) for fi, ai in zip(f, a)]
    unchanged = [np.array_equal(fi, ai) for fi, ai in zip(f, a)]
    assert all(p or q for p, q in zip(is_flipped, unchanged)) and 6 <= sum(is_flipped) <= 26
    np.testing.assert_array_equal(Batches(src, 32, seed=1, random_flip=True).batch_at(3)["x"], f)
    halves = [Batches(src, 32, seed=1, random_flip=True, process_index=p, num_processes=2).batch_at(3)["x"]
              for p in range(2)]
    np.testing.assert_array_equal(np.concatenate(halves), f)
    with pytest.raises(ValueError, match="random_flip flips images"):
        Batches(ArraySource(np.zeros((8, 2), np.float32)), 4, random_flip=True)


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _write_npy(path, shape, rows_per_chunk=4096):
    """A uint8 .npy of ``shape`` written in chunks (never whole in memory)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_2_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
        row = int(np.prod(shape[1:]))
        rng = np.random.default_rng(0)
        for start in range(0, shape[0], rows_per_chunk):
            n = min(rows_per_chunk, shape[0] - start)
            f.write(rng.integers(0, 256, n * row, dtype=np.uint8).tobytes())


def _streamed_rss_growth(path, steps, batch_size=128) -> int:
    src = open_source(path).train
    it = Batches(src, batch_size, seed=0)(0)
    next(it)
    before = _rss_bytes()
    peak = before
    for _ in range(steps):
        assert next(it)["x"].shape == (batch_size, 32, 32, 3)
        peak = max(peak, _rss_bytes())
    return peak - before


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS from /proc (Linux)")
def test_streaming_a_file_keeps_memory_to_the_batches_read(tmp_path):
    path = str(tmp_path / "big.npy")
    _write_npy(path, (24_000, 32, 32, 3))  # 74 MB
    growth = _streamed_rss_growth(path, steps=150)  # reads ~58 MB of it
    assert growth < 16 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB while streaming a 74 MB file"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS from /proc (Linux)")
def test_streaming_a_2gb_file_keeps_memory_to_the_batches_read(tmp_path):
    path = str(tmp_path / "big.npy")
    _write_npy(path, (680_000, 32, 32, 3))  # 2.09 GB
    growth = _streamed_rss_growth(path, steps=1000)  # reads 393 MB of it, spread over the whole file
    assert growth < 32 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB while streaming a 2 GB file"


def test_fingerprint_tells_data_apart_and_ignores_where_they_lie(tmp_path):
    x, y = _images()
    np.save(tmp_path / "a.npy", x)
    os.makedirs(tmp_path / "moved")
    np.save(tmp_path / "moved" / "a.npy", x)
    x2 = x.copy()
    x2[3, 2, 1, 0] ^= 1  # one bit of one pixel
    np.save(tmp_path / "b.npy", x2)
    fa, fm, fb = (open_source(str(tmp_path / p)).train.fingerprint()["sha256"] for p in ("a.npy", "moved/a.npy", "b.npy"))
    assert fa == fm and fa != fb
    s = open_source(str(tmp_path / "a.npy"))
    assert s.train.fingerprint()["sha256"] != s.test.fingerprint()["sha256"]
    assert ArraySource(x, y).fingerprint()["sha256"] != ArraySource(x2, y).fingerprint()["sha256"]


BAD = {
    "missing file": (lambda d: str(d / "nope.npy"), "nope.npy: no such file or folder"),
    "unknown name": (lambda d: "mnistt", "'mnistt' is not a tfds dataset, a .npy/.npz file or a folder; did you mean "
                                         ".*mnist"),
    "wrong dtype": (lambda d: _save(d / "f.npy", np.zeros((5, 4, 4, 3), np.float32)),
                    r"f.npy: expected uint8 images .* got float32 \(5, 4, 4, 3\) \(floats in \[0, 1\]"),
    "int points": (lambda d: _save(d / "i.npy", np.zeros((5, 2), np.int64)), r"i.npy: .* got int64 \(5, 2\)"),
    "truncated": (lambda d: _truncate(_save(d / "t.npy", np.zeros((50, 4, 4, 3), np.uint8))), "t.npy: truncated"),
    "not npy": (lambda d: _text(d / "n.npy"), "n.npy: not a readable .npy file"),
    "npz without images": (lambda d: _savez(d / "z.npz", foo=np.zeros(3)), r"z.npz: no array named x .* it has \['foo'\]"),
    "other suffix": (lambda d: _text(d / "data.csv"), "data.csv: expected a .npy or .npz file, or a folder"),
    "empty folder": (lambda d: _mkdir(d / "empty"), "empty: empty: no image files"),
    "unreadable image": (lambda d: _folder_with(d / "bad", broken=True), r"bad/z.png: cannot read this image"),
    "mixed sizes": (lambda d: _folder_with(d / "mixed", other_size=True), "images of different sizes .* data.image_size"),
    "one example": (lambda d: _save(d / "one.npy", np.zeros((1, 4, 4, 1), np.uint8)), "cannot be split into train"),
}


def _save(path, a):
    np.save(path, a)
    return str(path)


def _savez(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 10)
    return path


def _text(path):
    path.write_text("a,b\n1,2\n")
    return str(path)


def _mkdir(path):
    path.mkdir()
    return str(path)


def _folder_with(path, broken=False, other_size=False):
    x, _ = _images(n=3)
    _write_folder(path, x)
    if broken:
        (path / "z.png").write_bytes(b"not a png")
    if other_size:
        Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(path / "z.png")
    return str(path)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_data_is_refused_naming_the_file_and_the_problem(case, tmp_path):
    make, match = BAD[case]
    with pytest.raises(DataError, match=match):
        open_source(make(tmp_path))


def test_mixed_sizes_are_accepted_when_resized(tmp_path):
    s = open_source(_folder_with(tmp_path / "mixed", other_size=True), image_size=4)
    xs = np.concatenate([s.train.read_all()["x"], s.test.read_all()["x"]])
    assert xs.shape == (4, 4, 4, 3)
