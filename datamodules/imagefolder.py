"""ImageFolder datasets: ROOT/train/<class>/*.jpg and ROOT/val/<class>/*.jpg
(ImageNet, Imagenette, Tiny-ImageNet and the like).

Splits: ROOT/train/ gives train (and val, split off by `val_fraction`, seeded);
ROOT/val/ is the test split, as published ImageNet numbers are. When ROOT/test/
also exists with class folders, val/ is the validation split and test/ the test.
Tiny-ImageNet's val/ (val/images/ + val_annotations.txt) is read as well.
Images are converted to RGB and resized to image_size x image_size (default 224).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from .base import ClassificationDataModule

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class FileListDataset(Dataset):
    """(path, label) list; get_raw opens the image as an RGB uint8 tensor (3, H, W)."""

    def __init__(self, samples: list[tuple[Path, int]], classes: list[str], transform=None):
        self.samples, self.classes, self.transform = samples, classes, transform

    def __len__(self):
        return len(self.samples)

    def get_raw(self, i):
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor
        path, y = self.samples[i]
        try:
            with Image.open(path) as im:
                x = pil_to_tensor(im.convert("RGB"))
        except OSError as e:
            raise ValueError(f"corrupt image {path}: {e}") from None
        return x, torch.tensor(y)

    def __getitem__(self, i):
        x, y = self.get_raw(i)
        return (self.transform(x) if self.transform else x.float().div_(255)), y


def _class_folders(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


def _scan(d: Path, classes: list[str]) -> list[tuple[Path, int]]:
    out = []
    for idx, c in enumerate(classes):
        cdir = d / c
        if not cdir.is_dir():
            continue
        out += [(p, idx) for p in sorted(cdir.rglob("*")) if p.suffix.lower() in IMG_EXTENSIONS]
    return out


def _scan_tiny_val(d: Path, classes: list[str]) -> list[tuple[Path, int]]:
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for line in (d / "val_annotations.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1] in index and (d / "images" / parts[0]).is_file():
            out.append((d / "images" / parts[0], index[parts[1]]))
    return out


def scan_imagefolder(root: str):
    """(train, val_or_none, test, classes) file lists; clear errors for a wrong layout."""
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"ImageFolder root {r} does not exist; expected {r}/train/<class>/*.jpg and "
                                f"{r}/val/<class>/*.jpg")
    classes = _class_folders(r / "train")
    if not classes:
        raise FileNotFoundError(f"ImageFolder: expected class folders in {r}/train/ (train/<class>/*.jpg), found none")
    train = _scan(r / "train", classes)
    if not train:
        raise FileNotFoundError(f"ImageFolder: no images ({', '.join(IMG_EXTENSIONS)}) under {r}/train/<class>/")

    def split(name):
        d = r / name
        if (d / "val_annotations.txt").is_file():
            return _scan_tiny_val(d, classes)
        extra = sorted(set(_class_folders(d)) - set(classes))
        if extra:
            raise ValueError(f"ImageFolder: {d} has class folders not in train/: {', '.join(extra[:5])}")
        return _scan(d, classes) if d.is_dir() else None

    val, test = split("val"), split("test")
    if test is None:
        test, val = val, None
    if not test:
        raise FileNotFoundError(f"ImageFolder: expected held-out images in {r}/val/<class>/ (or {r}/test/<class>/), "
                                f"found none")
    return train, val, test, classes


class ImageFolderDataModule(ClassificationDataModule):
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)
    native_size = 224
    in_chans = 3

    def __init__(self, root: str, image_size: int | None = 224, **kwargs):
        super().__init__(root=root, image_size=image_size, **kwargs)

    def _load(self):
        train, val, test, classes = self._scan
        return FileListDataset(train, classes), FileListDataset(test, classes), len(classes)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self._scan = scan_imagefolder(self.root)
        self._val_files = self._scan[1]
        if self._val_files:
            self.val_fraction = 0.0  # validation comes from val/, train/ stays whole
        super().setup(stage)
        if self._val_files:  # a separate val/ next to test/: use it instead of a split of train/
            from .base import Subset, take_subset
            ds = FileListDataset(self._val_files, self.train_set.base.classes)
            idx = take_subset(list(range(len(ds))), self.val_subset, self.seed + 1, "val_subset")
            self.val_set = Subset(ds, idx, self._eval_tf or self.default_transform(False))
