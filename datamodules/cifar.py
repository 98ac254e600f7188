"""CIFAR-10 and CIFAR-100 in torchvision's on-disk format.

ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} and
ROOT/cifar-100-python/{train, test, meta}: pickled dicts with "data" (N x 3072
uint8, channel-major 32x32) and "labels" (CIFAR-10) or "fine_labels" (CIFAR-100).
The files are parsed here (torchvision's class also checks the MD5 sums of the
official archive, which rejects any locally generated copy); torchvision is used
only to download when the files are missing and `download=True`.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .base import ClassificationDataModule, TensorImageDataset

LAYOUTS = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    meta="batches.meta", label_key="labels", names_key="label_names", num_classes=10),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta",
                     label_key="fine_labels", names_key="fine_label_names", num_classes=100),
}


def _read_batch(path: Path, label_key: str):
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise ValueError(f"corrupt CIFAR file {path}: cannot unpickle it ({type(e).__name__}); expected torchvision's "
                         f"python-pickle format; delete it to download again") from None
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or label_key not in d:
        raise ValueError(f"corrupt CIFAR file {path}: expected keys 'data' and {label_key!r}, got {sorted(d)}")
    data = np.asarray(d["data"], dtype=np.uint8)
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(f"corrupt CIFAR file {path}: expected data (N, 3072) and N labels, "
                         f"got {data.shape} and {len(labels)}")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar(root: str, which: str, download: bool = False):
    lay = LAYOUTS[which]
    base = Path(root) / lay["folder"]
    expected = [base / n for n in lay["train"] + lay["test"] + [lay["meta"]]]
    if not all(p.is_file() for p in expected) and download:
        from torchvision import datasets
        cls = datasets.CIFAR10 if which == "cifar10" else datasets.CIFAR100
        try:
            cls(str(root), train=True, download=True)
        except Exception as e:  # noqa: BLE001
            raise FileNotFoundError(f"{which}: files missing under {base} and the torchvision download failed "
                                    f"({type(e).__name__}: {str(e)[:120]}); put torchvision's {lay['folder']}/ "
                                    f"folder under root={root}") from None
    missing = [p.name for p in expected if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{which}: expected torchvision's layout {base}/ with {', '.join(missing)}; "
                                f"pass download=True (needs the internet) or set root= to the folder holding "
                                f"{lay['folder']}/")
    try:
        with open(base / lay["meta"], "rb") as f:
            meta = pickle.load(f, encoding="latin1")
        meta = {k.decode() if isinstance(k, bytes) else k: v for k, v in meta.items()}
        names = [n.decode() if isinstance(n, bytes) else n for n in meta[lay["names_key"]]]
    except Exception:  # noqa: BLE001
        raise ValueError(f"corrupt CIFAR meta file {base / lay['meta']}: expected a pickled dict with "
                         f"{lay['names_key']!r}") from None
    sets = []
    for split in ("train", "test"):
        parts = [_read_batch(base / n, lay["label_key"]) for n in lay[split]]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        if y.min() < 0 or y.max() >= lay["num_classes"]:
            raise ValueError(f"corrupt CIFAR labels in {base}: expected 0..{lay['num_classes'] - 1}, "
                             f"got {y.min()}..{y.max()}")
        sets.append(TensorImageDataset(torch.from_numpy(x.copy()), torch.from_numpy(y), classes=names))
    return sets[0], sets[1], lay["num_classes"]


class CIFAR10DataModule(ClassificationDataModule):
    which = "cifar10"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    native_size = 32
    in_chans = 3

    def __init__(self, root: str = "data", download: bool = True, **kwargs):
        super().__init__(root=root, **kwargs)
        self.download = download

    def prepare_data(self) -> None:
        lay = LAYOUTS[self.which]
        if self.download and not (Path(self.root) / lay["folder"]).is_dir():
            load_cifar(self.root, self.which, download=True)

    def _load(self):
        return load_cifar(self.root, self.which, download=self.download)


class CIFAR100DataModule(CIFAR10DataModule):
    which = "cifar100"
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
