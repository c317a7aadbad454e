"""Batches of a :mod:`gen_jax.data.sources` source, streamed by grain.

The order is a pure function of (seed, step): within epoch e the examples are visited in the order
``numpy.random.default_rng([seed, e]).permutation(N)``, ``N // B`` full batches per epoch (drop
remainder), so the batch of global step s is computable in O(1) and a resumed run reads exactly the
batches an uninterrupted one would. Process p of P reads only rows ``[pB/P, (p+1)B/P)`` of every
global batch. Host-side augmentation (``random_flip``) is drawn from ``default_rng([seed, 1, s])`` for
the whole global batch, so it is the same whatever the number of processes.

Streaming is grain's: ``grain.MapDataset`` indexed by step, mapped by :meth:`Batches.batch_at` and
read ahead (``prefetch`` batches) by ``num_threads`` threads, or by ``num_workers`` worker processes
(``mp_prefetch``). The step is the iterator's whole state (grain's ``{'next_index'}`` counts steps
from ``start_step``), so the checkpoint's step restores the pipeline exactly.
"""

from __future__ import annotations

import sys
from typing import Iterator

import numpy as np

from gen_jax.data.sources import Source


class Batches:
    """Deterministic, resumable, prefetched batches of ``source``.

    Args:
      source: a data source (random access by index).
      batch_size: the global batch size.
      seed: the order's seed.
      shuffle: False: the examples in their order, every epoch.
      process_index, num_processes: this process's slice of every global batch.
      random_flip: flip images horizontally with probability 1/2 (training augmentation).
      num_threads: threads that read and decode ahead (0: batches are read when asked for).
      prefetch: batches read ahead.
      num_workers: > 0: worker processes instead of threads (for decoding that holds the GIL).
    """

    def __init__(self, source: Source, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 process_index: int = 0, num_processes: int = 1, random_flip: bool = False,
                 num_threads: int = 2, prefetch: int = 4, num_workers: int = 0):
        n = len(source)
        if batch_size < 1 or batch_size > n:
            raise ValueError(f"batch_size must be in [1, {n}] (the dataset size), got {batch_size}")
        if batch_size % num_processes:
            raise ValueError(f"batch_size {batch_size} is not divisible by the number of processes "
                             f"{num_processes}")
        if random_flip and source.kind != "image":
            raise ValueError(f"random_flip flips images; {source.name} holds {source.kind}")
        self.source, self.batch_size, self.seed, self.shuffle = source, batch_size, seed, shuffle
        self.process_index, self.num_processes, self.random_flip = process_index, num_processes, random_flip
        self.num_threads, self.prefetch, self.num_workers = num_threads, prefetch, num_workers
        self._cached_epoch = (None, None)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.source) // self.batch_size

    def _order(self, epoch: int) -> np.ndarray:
        if self._cached_epoch[0] != epoch:
            n = len(self.source)
            order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._cached_epoch = (epoch, order)
        return self._cached_epoch[1]

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """The (process-local part of the) batch of global step ``step``, in O(1) of ``step``."""
        epoch, k = divmod(int(step), self.steps_per_epoch)
        rows = self._order(epoch)[k * self.batch_size:(k + 1) * self.batch_size]
        local = slice(self.process_index * self.batch_size // self.num_processes,
                      (self.process_index + 1) * self.batch_size // self.num_processes)
        batch = self.source.read(rows[local])
        if self.random_flip:
            flip = np.random.default_rng([self.seed, 1, int(step)]).random(self.batch_size)[local] < 0.5
            batch["x"] = np.where(flip[:, None, None, None], batch["x"][:, :, ::-1], batch["x"])
        return batch

    def _stream(self, steps, fn) -> Iterator[dict[str, np.ndarray]]:
        import grain

        ds = grain.MapDataset.source(steps).map(fn)
        if self.num_workers > 0:
            from absl import flags

            if not flags.FLAGS.is_parsed():  # grain's workers read absl flags: use their defaults
                flags.FLAGS.mark_as_parsed()
            it = ds.to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(
                num_workers=self.num_workers, per_worker_buffer_size=max(1, self.prefetch // self.num_workers)))
        elif self.num_threads > 0:
            it = ds.to_iter_dataset(grain.ReadOptions(num_threads=self.num_threads,
                                                      prefetch_buffer_size=self.prefetch))
        else:
            return (fn(s) for s in steps)
        return iter(it)

    def __call__(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """The batches of steps ``start_step, start_step + 1, ...`` (endless), read ahead."""
        return self._stream(range(int(start_step), sys.maxsize), self.batch_at)

    def _in_order(self, k: int) -> dict[str, np.ndarray]:
        return self.source.read(np.arange(k * self.batch_size, (k + 1) * self.batch_size))

    def epoch(self) -> Iterator[dict[str, np.ndarray]]:
        """One pass in order over every full batch (for evaluation; no augmentation)."""
        return self._stream(range(self.steps_per_epoch), self._in_order)
