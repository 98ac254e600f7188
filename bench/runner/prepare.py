"""Data preparation before the first cell, saying what was done.

Fashion-MNIST: an explicit `data.root` first; else Debian's package
`dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist/), installed with
apt-get when apt is usable (root, apt-get present) and the files are missing;
else torchvision's download into the cache (the datamodule does it). Other
datasets: the datamodule's own `prepare_data()` (torchvision download for CIFAR,
a check of the ImageFolder root for ImageNet, nothing for synthetic data).
"""
from __future__ import annotations

import os
import shutil
import subprocess

DEBIAN_PACKAGE = "dataset-fashion-mnist"


def _apt_usable() -> bool:
    return shutil.which("apt-get") is not None and hasattr(os, "geteuid") and os.geteuid() == 0


def prepare(name: str, root: str | None = None, *, allow_apt: bool = True) -> str:
    """Make dataset `name` available; return one line saying where it comes from."""
    if name == "fashion_mnist":
        from datamodules.fashion_mnist import DEBIAN_DIR, _find, locate_fashion_mnist

        if root is not None and _find(__import__("pathlib").Path(root)):
            return f"data: Fashion-MNIST from {root} (data.root)"
        if _find(__import__("pathlib").Path(DEBIAN_DIR)):
            return f"data: Fashion-MNIST from Debian's package {DEBIAN_PACKAGE} ({DEBIAN_DIR})"
        if allow_apt and _apt_usable():
            r = subprocess.run(["apt-get", "install", "-y", "-q", DEBIAN_PACKAGE], capture_output=True, text=True,
                               env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            if r.returncode == 0 and _find(__import__("pathlib").Path(DEBIAN_DIR)):
                return f"data: installed Debian's package {DEBIAN_PACKAGE} with apt-get; Fashion-MNIST from {DEBIAN_DIR}"
            why = " ".join((r.stderr or r.stdout).split())[-200:]
            note = f"apt-get install {DEBIAN_PACKAGE} failed ({why}); "
        else:
            note = "apt not usable here (needs root and apt-get); "
        paths = locate_fashion_mnist(root)  # torchvision download into the cache, or a FileNotFoundError saying what to do
        where = os.path.dirname(str(next(iter(paths.values()))))
        return f"data: {note}Fashion-MNIST from {where} (torchvision download / cache)"
    from .execute import create_dm

    dm = create_dm(name, root=root)
    dm.prepare_data()
    return f"data: {name} prepared by its datamodule" + (f" (root {root})" if root else "")
