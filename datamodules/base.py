"""Shared pieces of the DataModules: in-memory image datasets, transforms, seeded
splits and exact distributed evaluation.

Exact evaluation: Lightning's default distributed sampler pads an evaluation
set to a multiple of the world size by repeating samples, so some samples are
counted twice. `UnpaddedDistributedSampler` gives rank r the indices r, r + W,
r + 2W, ... with no padding: every sample is evaluated by exactly one rank.
Ranks may then run different numbers of batches, which evaluation allows (no
gradient sync); torchmetrics sums the metric states across ranks at compute().
The sampler subclasses DistributedSampler, which Lightning leaves in place (any
other sampler it wraps in its own padded one).

Resumable training order: the train loader is torchdata's StatefulDataLoader
(`ResumableDataLoader`) with a `ResumableSampler`, so a checkpoint taken in the
middle of an epoch holds the epoch and how far into it training got (Lightning
saves and restores the state of any train loader with `state_dict` and
`load_state_dict`), and the resumed run sees exactly the batches the
uninterrupted one would have seen. Augmentation draws come from a seed per
(seed, epoch, sample): they do not depend on which worker process or rank loads
a sample, nor on where a run was resumed.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple, Sequence, Sized

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader


def _world() -> tuple[int, int]:
    """(world size, rank) of the initialised process group, (1, 0) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class UnpaddedDistributedSampler(DistributedSampler):
    """Sequential shard of an evaluation set: rank r gets r, r + W, ...; no sample repeated or dropped.

    A DistributedSampler subclass, so Lightning keeps it as it is (it wraps any other
    sampler in its own padded distributed sampler)."""

    def __init__(self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None):
        world, this_rank = _world()
        num_replicas = world if num_replicas is None else num_replicas
        rank = this_rank if rank is None else rank
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))
        self.total_size = len(dataset)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """SplitMix64's output function: a well-spread 64-bit value from a 64-bit integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of training sample `index`'s augmentation in `epoch` (63 bits): a function of these three only."""
    h = _splitmix64(seed & _MASK64)
    h = _splitmix64(h ^ (epoch & _MASK64))
    return _splitmix64(h ^ (index & _MASK64)) >> 1


class SampleKey(NamedTuple):
    """What `ResumableSampler` yields: a training-set index and the seed of its augmentation this epoch."""
    index: int
    seed: int


class ResumableSampler(DistributedSampler):
    """Seeded shuffle of a training set that a checkpoint can resume in the middle of an epoch.

    Epoch e's order is DistributedSampler's: a permutation seeded with seed + e, padded to a multiple
    of the world size and strided by rank (a single process is rank 0 of 1 and gets the whole set).
    `state_dict()` holds the epoch of the current pass and how many of its indices were handed out;
    after `load_state_dict()` the next pass continues from there, and a finished pass continues with
    the next epoch (what Lightning runs after an end-of-epoch checkpoint). With `sample_seeds` it
    yields `SampleKey(index, sample_seed(seed, epoch, index))`, which `Subset` turns into the seed of
    that sample's transform. A DistributedSampler subclass, so Lightning leaves it in place under DDP;
    Lightning calls `set_epoch` at every epoch start (other training loops must, as for
    DistributedSampler). The number of processes comes from torch.distributed when not given."""

    def __init__(self, dataset: Sized, seed: int = 0, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, sample_seeds: bool = True):
        world, this_rank = _world()
        num_replicas = world if num_replicas is None else num_replicas
        rank = this_rank if rank is None else rank
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.sample_seeds = sample_seeds
        self._pass_epoch: int | None = None  # epoch of the pass under way (or last finished), None before any
        self._handed_out = 0  # indices of that pass handed out so far
        self._resume_at = 0  # indices the next pass skips (set by load_state_dict)

    def __iter__(self):
        # a generator: the order is drawn at the first next(), after Lightning's set_epoch for this epoch
        order = list(super().__iter__())
        epoch, start, self._resume_at = self.epoch, self._resume_at, 0
        self._pass_epoch, self._handed_out = epoch, start
        for i in order[start:]:
            self._handed_out += 1
            yield SampleKey(i, sample_seed(self.seed, epoch, i)) if self.sample_seeds else i

    def state_dict(self) -> dict[str, int]:
        if self._pass_epoch is None:
            return {"epoch": int(self.epoch), "yielded": int(self._resume_at)}
        return {"epoch": int(self._pass_epoch), "yielded": int(self._handed_out)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, yielded = int(state["epoch"]), int(state["yielded"])
        if not 0 <= yielded <= self.num_samples:
            raise ValueError(f"sampler state has {yielded} indices handed out of a pass of {self.num_samples}: "
                             f"it was saved for another training set or number of processes")
        self._pass_epoch, self._handed_out = epoch, yielded
        if yielded == self.num_samples:  # the pass had finished: the next one is the next epoch's
            epoch, yielded = epoch + 1, 0
        self.set_epoch(epoch)
        self._resume_at = yielded


class ResumableDataLoader(StatefulDataLoader):
    """torchdata's StatefulDataLoader that also resumes from a state saved with another number of worker
    processes. Its batches do not depend on the workers (a `ResumableSampler` orders them and seeds their
    augmentation), so then only the sampler's position is restored; torchdata itself refuses such a state."""

    def __init__(self, *args, **kwargs):
        with warnings.catch_warnings():
            # torchdata 0.11 calls torch.set_vital, deprecated in recent torch; it does not affect loading
            warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
            super().__init__(*args, **kwargs)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict and isinstance(self.sampler, ResumableSampler) and _saved_workers(state_dict) != self.num_workers:
            position = _sampler_position(state_dict)
            super().load_state_dict({})
            self.sampler.load_state_dict(position)
            return
        super().load_state_dict(state_dict)


def _saved_workers(state: dict) -> int:
    return int(state["_snapshot"]["_main_snapshot"]["_num_workers"]) if "_snapshot" in state else 0


def _sampler_position(state: dict) -> dict:
    """The sampler's state inside a StatefulDataLoader state (main process, or the last snapshot of a loader
    with workers, which this loader's snapshot_every_n_steps=1 keeps at the batch last yielded)."""
    try:
        if "_snapshot" in state:
            if state.get("_steps_since_snapshot", 0):
                raise KeyError("_steps_since_snapshot")
            state = state["_snapshot"]["_main_snapshot"]
        return state["_sampler_iter_state"]["sampler_state"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"the checkpoint's training loader state was saved with another number of worker "
                         f"processes and its sampler position cannot be read from it ({e!r}); "
                         f"resume with the data.num_workers it was written with") from None


class TensorImageDataset(Dataset):
    """Images held as a uint8 tensor (N, C, H, W) with int64 labels; `transform` maps a
    uint8 (C, H, W) image to the float tensor the model sees."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None,
                 classes: Sequence[str] | None = None):
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, labels.long(), transform
        self.classes = list(classes) if classes is not None else None

    def __len__(self) -> int:
        return len(self.images)

    def get_raw(self, i):
        return self.images[i], self.labels[i]

    def __getitem__(self, i):
        x = self.images[i]
        x = self.transform(x) if self.transform is not None else x.float().div_(255)
        return x, self.labels[i]


# Largest float copy of a split that `Subset.prepare` keeps in memory (bytes). Above it (large images,
# large sets) images are converted per sample as they are read.
PREPARED_MAX_BYTES = 1 << 30


class Subset(Dataset):
    """A view of `base` at `indices` with its own transform (train and val of one set differ).

    `prepare()` runs the part of an `ImageTransform` that draws nothing (to float, resize, and, without
    augmentation, normalise) once over the whole view, batched, and keeps the float images; reads
    then index them. The result is bitwise what the per-sample transform gives (resizing and
    normalising treat every image on its own), and it removes the per-sample resize from every
    training step and evaluation batch."""

    def __init__(self, base, indices, transform=None):
        self.base, self.indices, self.transform = base, list(indices), transform
        self.prepared: torch.Tensor | None = None  # (len, C, H, W) float, or None: convert per sample
        self.prepared_done = False  # whether `prepared` is the transform's whole output (no augmentation)
        self.labels: torch.Tensor | None = None

    def __len__(self):
        return len(self.indices)

    def prepare(self, max_bytes: int = PREPARED_MAX_BYTES, chunk: int = 4096) -> bool:
        """Precompute the view's float images (see the class docstring); False, and nothing kept, when the
        transform is not an ImageTransform, the base holds no uint8 image tensor, or the copy would exceed
        max_bytes."""
        tf, images = self.transform, getattr(self.base, "images", None)
        if not isinstance(tf, ImageTransform) or not isinstance(images, torch.Tensor) or not self.indices:
            return False
        C, H, W = images.shape[1:]
        if tf.image_size is not None:
            H = W = tf.image_size
        if len(self.indices) * C * H * W * 4 > max_bytes:
            return False
        idx = torch.as_tensor(self.indices, dtype=torch.long)
        out = torch.empty(len(idx), C, H, W)
        for s in range(0, len(idx), chunk):
            x = tf.prepare(images[idx[s:s + chunk]])
            out[s:s + chunk] = x if tf.augment else tf.normalize(x)
        self.prepared, self.prepared_done = out, not tf.augment
        self.labels = self.base.labels[idx]
        return True

    def __getitem__(self, i):
        if isinstance(i, SampleKey):
            if self.transform is None or not getattr(self.transform, "augment", True):
                return self._item(i.index)  # a transform that draws nothing needs no seed (forking costs ~20%)
            # the transform draws from torch's RNG seeded for this sample (the caller's RNG state is kept)
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(i.seed)
                return self._item(i.index)
        return self._item(i)

    def _item(self, i):
        if self.prepared is not None:
            x = self.prepared[i]
            return (x if self.prepared_done else self.transform.finish(x)), self.labels[i]
        x, y = self.base.get_raw(self.indices[i]) if hasattr(self.base, "get_raw") else self.base[self.indices[i]]
        return (self.transform(x) if self.transform is not None else x), y


class ImageTransform:
    """Default transform on a uint8 (C, H, W) tensor: resize to `image_size`, optional
    augmentation (random crop with `pad` pixels of padding, horizontal flip), scale to
    [0, 1], normalise with `mean`, `std` (per channel). Picklable for worker processes."""

    def __init__(self, image_size: int | None, mean: Sequence[float], std: Sequence[float], augment: bool = False,
                 pad: int = 2, flip: bool = True):
        self.image_size, self.augment, self.pad, self.flip = image_size, augment, pad, flip
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, img) -> torch.Tensor:
        if not isinstance(img, torch.Tensor):  # PIL image (ImageFolder)
            from torchvision.transforms.functional import pil_to_tensor
            img = pil_to_tensor(img.convert("RGB") if img.mode not in ("RGB", "L") else img)
        return self.finish(self.prepare(img))

    def prepare(self, img: torch.Tensor) -> torch.Tensor:
        """uint8 (C, H, W) or (N, C, H, W) -> float in [0, 1] at image_size: the steps that draw nothing."""
        x = img.float().div_(255)
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            one = x.dim() == 3
            x = F.interpolate(x.unsqueeze(0) if one else x, size=(self.image_size, self.image_size),
                              mode="bilinear", align_corners=False, antialias=True)
            x = x.squeeze(0) if one else x
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """A prepared (C, H, W) image -> what the model sees: augmentation (if on), then normalisation."""
        if self.augment:
            if self.pad:
                H, W = x.shape[-2:]
                x = F.pad(x, (self.pad,) * 4)
                i, j = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
                x = x[:, i:i + H, j:j + W]
            if self.flip and torch.rand(()) < 0.5:
                x = x.flip(-1)
        return self.normalize(x)

    def __repr__(self):
        return (f"ImageTransform(image_size={self.image_size}, augment={self.augment}, pad={self.pad}, "
                f"flip={self.flip})")


def seeded_split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, val) index split of range(n)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = int(round(n * val_fraction))
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def take_subset(indices: list[int], size: int | None, seed: int, what: str) -> list[int]:
    """A seeded random `size` of `indices` (all when size is None)."""
    if size is None:
        return indices
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"{what} must be a positive integer or None, got {size!r}")
    if size >= len(indices):
        return indices
    perm = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    return sorted(indices[p] for p in perm[:size])


class ClassificationDataModule(L.LightningDataModule):
    """Train/val/test splits with seeded determinism and exact distributed evaluation.

    Subclasses implement `_load()` -> (train_set, test_set, num_classes) where each
    set supports `get_raw(i)` -> (uint8 image, label) and `__len__`; val is split from
    train by `val_fraction` (seeded). Transforms: `train_transform`/`eval_transform`
    callables replace the defaults (ImageTransform with `augment` for train).
    """

    mean: Sequence[float] = (0.5,)
    std: Sequence[float] = (0.5,)
    native_size: int | None = None
    in_chans: int = 3

    def __init__(self, root: str | None = None, batch_size: int = 128, num_workers: int = 0, seed: int = 0,
                 val_fraction: float = 0.1, image_size: int | None = None, train_subset: int | None = None,
                 val_subset: int | None = None, test_subset: int | None = None, augment: bool = True,
                 train_transform: Callable | None = None, eval_transform: Callable | None = None,
                 eval_batch_size: int | None = None):
        super().__init__()
        for name, v in (("batch_size", batch_size),):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")
        if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                       or image_size <= 0):
            raise ValueError(f"image_size must be a positive integer or None, got {image_size!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.root, self.batch_size, self.num_workers, self.seed = root, batch_size, num_workers, seed
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_fraction, self.image_size = val_fraction, image_size
        self.train_subset, self.val_subset, self.test_subset = train_subset, val_subset, test_subset
        self.augment = augment
        self._train_tf, self._eval_tf = train_transform, eval_transform
        self.num_classes: int | None = None
        self.train_set = self.val_set = self.test_set = None

    # -- subclass API
    def _load(self):
        raise NotImplementedError

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) of the tensors the model receives."""
        size = self.image_size or self.native_size
        return (self.in_chans, size, size)

    def default_transform(self, train: bool) -> Callable:
        return ImageTransform(self.image_size, self.mean, self.std, augment=train and self.augment)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train_full, test_full, self.num_classes = self._load()
        train_tf = self._train_tf or self.default_transform(True)
        eval_tf = self._eval_tf or self.default_transform(False)
        tr, va = seeded_split(len(train_full), self.val_fraction, self.seed)
        tr = take_subset(tr, self.train_subset, self.seed, "train_subset")
        va = take_subset(va, self.val_subset, self.seed + 1, "val_subset")
        te = take_subset(list(range(len(test_full))), self.test_subset, self.seed + 2, "test_subset")
        self.train_set = Subset(train_full, tr, train_tf)
        self.val_set = Subset(train_full, va, eval_tf) if va else None
        self.test_set = Subset(test_full, te, eval_tf)
        for part in (self.train_set, self.val_set, self.test_set):
            if part is not None:
                part.prepare()

    # -- loaders
    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    def train_dataloader(self) -> ResumableDataLoader:
        """Shuffled training batches that resume mid-epoch (see the module docstring); under DDP each rank
        gets its shard. The generator seeds the worker processes (torchdata keeps their base seed)."""
        # per-sample seeds only for a transform that draws (computing them costs ~0.5 ms a batch of 128)
        draws = isinstance(self.train_set, Subset) and getattr(self.train_set.transform, "augment", True)
        sampler = ResumableSampler(self.train_set, seed=self.seed, sample_seeds=bool(draws))
        return ResumableDataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=False,
                                   num_workers=self.num_workers, generator=self._generator(),
                                   persistent_workers=self.num_workers > 0, worker_init_fn=_seed_worker)

    def _eval_loader(self, ds) -> DataLoader:
        # a generator of its own: creating the loader's iterator then leaves the global RNG untouched
        return DataLoader(ds, batch_size=self.eval_batch_size, sampler=UnpaddedDistributedSampler(ds),
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          generator=self._generator())

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)


def _seed_worker(worker_id: int) -> None:
    # each worker's torch seed is base_seed + id (set by DataLoader from the generator); derive the rest from it
    import random

    import numpy as np
    s = torch.initial_seed() % 2 ** 32
    random.seed(s)
    np.random.seed(s)


__all__ = ["ClassificationDataModule", "ImageTransform", "ResumableDataLoader", "ResumableSampler", "SampleKey",
           "TensorImageDataset", "UnpaddedDistributedSampler", "sample_seed", "seeded_split", "take_subset"]
