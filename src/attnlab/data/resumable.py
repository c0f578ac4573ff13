"""A DataLoader that a run killed mid-epoch resumes exactly where it stopped.

Lightning restores its step counters from a checkpoint, but a plain map-style loader would
replay the restarted epoch from its first batch. The state here is (epoch, batches already
trained on); `resume.LoaderStateCheckpoint` saves it in the checkpoint and hands it back through
`load_state_dict()` at `on_train_start` (Lightning itself does not), so the resumed epoch has the
same order (the token-bucket sampler shuffles from (seed, epoch)) and skips the batches already
trained on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler


class SkippingBatchSampler(Sampler):
    """Wraps a batch sampler: the next epoch starts `skip` batches in; everything else is delegated.

    The order is computed on the first `next()`, not on `iter()`: Lightning creates the
    iterator before it calls `set_epoch`, so an eager order would be the previous epoch's.
    (A loader with workers asks for batches as soon as its iterator exists; on a resume,
    `LoaderStateCheckpoint` creates that iterator again after restoring the state.)
    """

    def __init__(self, batch_sampler: Sampler):
        self.inner, self.skip = batch_sampler, 0
        # Lightning calls `set_epoch` on `loader.batch_sampler.sampler` (as on torch's BatchSampler) at
        # every epoch start; without this attribute it never would, and every epoch had epoch 0's order.
        self.sampler = batch_sampler

    @property
    def epoch(self) -> int:
        return getattr(self.inner, "epoch", 0)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        for i, batch in enumerate(self.inner):
            if i >= skip:
                yield batch

    def __len__(self) -> int:  # the full epoch: Lightning counts the skipped batches as done
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:  # e.g. TokenBucketSampler.batches
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class ResumableDataLoader(DataLoader):
    """DataLoader(dataset, batch_sampler=...) with Lightning's `state_dict` / `load_state_dict`.

    It owns a torch.Generator, so creating an iterator never draws from the global RNG: a run
    resumed from a checkpoint then sees the same dropout masks as one never interrupted.
    """

    def __init__(self, dataset, batch_sampler: Sampler, **kwargs: Any):
        kwargs.setdefault("generator", torch.Generator().manual_seed(0))
        super().__init__(dataset, batch_sampler=SkippingBatchSampler(batch_sampler), **kwargs)
        self._iterator_start, self._live = 0, None

    def __iter__(self):
        self._iterator_start = self.batch_sampler.skip
        self._live = super().__iter__()
        return self._live

    def state_dict(self) -> dict[str, int]:
        yielded = self._live._num_yielded if self._live is not None else 0
        return {"epoch": self.batch_sampler.epoch, "batches_done": self._iterator_start + yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Called before the epoch's first batch; its iterator may exist already (the order is drawn lazily)."""
        self.batch_sampler.set_epoch(state["epoch"])
        done = state["batches_done"]
        self.batch_sampler.skip = done if done < len(self.batch_sampler) else 0
        if self._live is not None and self._live._num_yielded == 0:
            self._iterator_start = self.batch_sampler.skip
