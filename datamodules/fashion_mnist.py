"""Fashion-MNIST (28x28 grayscale, 10 classes; 60,000 train / 10,000 test).

Where the raw idx files come from, in this order:
  1. `root` (the configured directory): the four files, gzip'd or not, directly in
     it or in ROOT/FashionMNIST/raw/ (torchvision's layout);
  2. Debian's package `dataset-fashion-mnist`: /usr/share/datasets/fashion-mnist/;
  3. torchvision's downloader (needs the internet), into `cache_dir`.
torchvision reads the files only unpacked under ROOT/FashionMNIST/raw/; this module
parses the idx format itself (gzip'd or not), validating magic numbers and sizes,
so a packaged read-only copy is used in place and a corrupt file is named.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from .base import ClassificationDataModule, TensorImageDataset

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
COUNTS = {"train": 60000, "test": 10000}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("ACMIX_BENCH_CACHE", Path.home() / ".cache" / "acmix-bench"))


def read_idx(path: Path, expect_dims: int) -> np.ndarray:
    """Parse an idx file (optionally gzip'd): magic 0x0000 0x08 <dims>, big-endian sizes, uint8 data."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"corrupt Fashion-MNIST file {path}: cannot read it ({e}); expected a "
                         f"{'gzip’d ' if str(path).endswith('.gz') else ''}idx file; delete it or point root elsewhere")
    if len(data) < 4 + 4 * expect_dims or data[0:2] != b"\x00\x00" or data[2] != 0x08 or data[3] != expect_dims:
        raise ValueError(f"corrupt Fashion-MNIST file {path}: expected an idx header for uint8 data with "
                         f"{expect_dims} dimension(s), got bytes {data[:4].hex()}")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(expect_dims))
    body = data[4 + 4 * expect_dims:]
    if len(body) != int(np.prod(shape)):
        raise ValueError(f"corrupt Fashion-MNIST file {path}: header says shape {shape} "
                         f"({int(np.prod(shape))} bytes) but the file holds {len(body)} bytes")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _find(dirpath: Path) -> dict[str, Path] | None:
    """The four files in dirpath (or dirpath/FashionMNIST/raw), each plain or .gz; None if any is missing."""
    for d in (dirpath, dirpath / "FashionMNIST" / "raw"):
        found = {}
        for key, stem in FILES.items():
            for cand in (d / stem, d / f"{stem}.gz"):
                if cand.is_file():
                    found[key] = cand
                    break
        if len(found) == 4:
            return found
    return None


def locate_fashion_mnist(root: str | None = None, cache_dir: str | None = None, download: bool = True,
                         debian_dir: str = DEBIAN_DIR) -> dict[str, Path]:
    """Paths of the four raw files, looked for in root, then Debian's package, then downloaded."""
    tried = []
    if root is not None:
        found = _find(Path(root))
        if found:
            return found
        tried.append(f"root={root} (no {', '.join(FILES.values())} [.gz] there or in {root}/FashionMNIST/raw)")
    else:
        tried.append("root (not configured)")
    found = _find(Path(debian_dir))
    if found:
        return found
    tried.append(f"{debian_dir} (missing; `apt-get install dataset-fashion-mnist` provides it)")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    found = _find(cache)
    if found:
        return found
    if download:
        try:
            from torchvision.datasets import FashionMNIST
            FashionMNIST(str(cache), train=True, download=True)
            FashionMNIST(str(cache), train=False, download=True)
            found = _find(cache)
            if found:
                return found
            tried.append(f"torchvision download into {cache} (finished but files missing)")
        except Exception as e:  # noqa: BLE001 - any network/filesystem failure: report, then fail below
            tried.append(f"torchvision download into {cache} (failed: {type(e).__name__}: {str(e)[:120]})")
    else:
        tried.append("torchvision download (disabled: download=False)")
    raise FileNotFoundError("Fashion-MNIST not found; tried: 1) " + "; 2) ".join(tried[:2]) + "; 3) " +
                            tried[-1] + ". Set root= to a directory holding the four idx files")


def load_fashion_mnist(paths: dict[str, Path]):
    out = {}
    for split in ("train", "test"):
        x = read_idx(paths[f"{split}_images"], 3)
        y = read_idx(paths[f"{split}_labels"], 1)
        if x.shape[1:] != (28, 28) or len(x) != len(y):
            raise ValueError(f"corrupt Fashion-MNIST {split} split: expected (N, 28, 28) images and N labels, got "
                             f"images {x.shape} in {paths[f'{split}_images']} and {len(y)} labels")
        if y.max() > 9:
            raise ValueError(f"corrupt Fashion-MNIST labels in {paths[f'{split}_labels']}: values must be 0-9, "
                             f"got max {int(y.max())}")
        out[split] = TensorImageDataset(torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64)),
                                        classes=CLASSES)
    return out["train"], out["test"]


class FashionMNISTDataModule(ClassificationDataModule):
    """Fashion-MNIST; `root` first, then /usr/share/datasets/fashion-mnist/, then a torchvision download."""

    mean = (0.2860,)
    std = (0.3530,)
    native_size = 28
    in_chans = 1

    def __init__(self, root: str | None = None, cache_dir: str | None = None, download: bool = True,
                 debian_dir: str = DEBIAN_DIR, **kwargs):
        super().__init__(root=root, **kwargs)
        self.cache_dir, self.download, self.debian_dir = cache_dir, download, debian_dir

    def _locate(self):
        return locate_fashion_mnist(self.root, self.cache_dir, self.download, self.debian_dir)

    def prepare_data(self) -> None:
        self._locate()

    def _load(self):
        train, test = load_fashion_mnist(self._locate())
        return train, test, 10
