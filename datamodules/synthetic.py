"""Synthetic images whose class is carried by spatial structure, for smoke runs.

Sample i of a split is generated from its own seeded generator, so any size and
resolution costs no memory and the same (seed, split, i) always gives the same
image. Class c is a sinusoidal grating at orientation pi * c / num_classes
(+- a quarter of the spacing between classes), with random spatial frequency
(1.5-3.5 cycles per image), phase and contrast, plus Gaussian pixel noise. Every
class has the same mean intensity and pixel histogram in expectation: only the
orientation of the spatial pattern tells classes apart, so a model must use
spatial structure (a per-pixel or global-statistics model stays at chance).
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

from .base import ClassificationDataModule


class SyntheticGratings(Dataset):
    def __init__(self, size: int, num_classes: int, image_size: int, in_chans: int, seed: int, noise: float = 0.25):
        self.size, self.num_classes, self.image_size, self.in_chans = size, num_classes, image_size, in_chans
        self.seed, self.noise = seed, noise
        self.classes = [f"orientation_{c}" for c in range(num_classes)]

    def __len__(self):
        return self.size

    def label(self, i: int) -> int:
        return i % self.num_classes

    def get_raw(self, i: int):
        if not 0 <= i < self.size:
            raise IndexError(i)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        c = self.label(i)
        u = torch.rand(5, generator=g)
        theta = math.pi * (c + 0.5 * (u[0].item() - 0.5)) / self.num_classes
        freq = 1.5 + 2.0 * u[1].item()
        phase = 2 * math.pi * u[2].item()
        contrast = 0.25 + 0.2 * u[3].item()
        n = self.image_size
        coords = torch.linspace(-0.5, 0.5, n)
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        wave = torch.sin(2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta)) + phase)
        img = 0.5 + contrast * wave
        img = img.expand(self.in_chans, n, n) + self.noise * torch.randn(self.in_chans, n, n, generator=g) * 0.5
        return (img.clamp(0, 1) * 255).round().to(torch.uint8), torch.tensor(c)

    def __getitem__(self, i):
        x, y = self.get_raw(i)
        return x.float() / 255, y


class SyntheticDataModule(ClassificationDataModule):
    """Generated gratings: `num_classes` orientations, `image_size` px, `in_chans` channels.

    Sizes: train_size (split into train/val by val_fraction) and test_size."""

    mean = (0.5,)
    std = (0.25,)

    def __init__(self, num_classes: int = 10, image_size: int = 32, in_chans: int = 3, train_size: int = 2048,
                 test_size: int = 512, noise: float = 0.25, augment: bool = False, **kwargs):
        for name, v in (("num_classes", num_classes), ("image_size", image_size), ("in_chans", in_chans),
                        ("train_size", train_size), ("test_size", test_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        super().__init__(root=None, image_size=image_size, augment=augment, **kwargs)
        self.native_size, self.in_chans, self.noise = image_size, in_chans, noise
        self.mean, self.std = (0.5,) * in_chans, (0.25,) * in_chans
        self.n_classes, self.train_size, self.test_size = num_classes, train_size, test_size

    def _load(self):
        mk = lambda n, s: SyntheticGratings(n, self.n_classes, self.image_size, self.in_chans, s, self.noise)  # noqa: E731
        return mk(self.train_size, self.seed * 2 + 1), mk(self.test_size, self.seed * 2 + 2), self.n_classes
