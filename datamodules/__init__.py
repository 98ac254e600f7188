"""LightningDataModules of acmix-bench: Fashion-MNIST, CIFAR-10/100, ImageFolder, Synthetic.

`create_datamodule(name, **kwargs)` builds one by name (see DATAMODULES)."""
from .base import ClassificationDataModule, ImageTransform, UnpaddedDistributedSampler
from .cifar import CIFAR10DataModule, CIFAR100DataModule
from .fashion_mnist import FashionMNISTDataModule
from .imagefolder import ImageFolderDataModule
from .synthetic import SyntheticDataModule

DATAMODULES = {
    "fashion_mnist": FashionMNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "imagefolder": ImageFolderDataModule,
    "synthetic": SyntheticDataModule,
}


def create_datamodule(name: str, **kwargs) -> ClassificationDataModule:
    """Build a DataModule by name; "fashion-mnist" and "fashionmnist" are accepted for fashion_mnist."""
    key = name.lower().replace("-", "_")
    key = {"fashionmnist": "fashion_mnist", "cifar_10": "cifar10", "cifar_100": "cifar100",
           "image_folder": "imagefolder"}.get(key, key)
    if key not in DATAMODULES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATAMODULES)}")
    return DATAMODULES[key](**kwargs)


__all__ = ["CIFAR10DataModule", "CIFAR100DataModule", "ClassificationDataModule", "DATAMODULES",
           "FashionMNISTDataModule", "ImageFolderDataModule", "ImageTransform", "SyntheticDataModule",
           "UnpaddedDistributedSampler", "create_datamodule"]
