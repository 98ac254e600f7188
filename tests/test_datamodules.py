"""DataModules: real Fashion-MNIST files, generated fixtures in the exact on-disk formats of
Fashion-MNIST idx, CIFAR-10/100 and ImageFolder; splits, determinism, exact distributed
evaluation, and the errors for missing or corrupt data."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.datasets import write_cifar, write_fashion_mnist, write_imagefolder
from torch.utils.data import DistributedSampler

from datamodules import (CIFAR10DataModule, CIFAR100DataModule, FashionMNISTDataModule, ImageFolderDataModule,
                         SyntheticDataModule, UnpaddedDistributedSampler, create_datamodule)
from datamodules.fashion_mnist import DEBIAN_DIR, locate_fashion_mnist

HAVE_DEBIAN = Path(DEBIAN_DIR, "train-images-idx3-ubyte.gz").is_file()
needs_debian = pytest.mark.skipif(not HAVE_DEBIAN, reason=f"{DEBIAN_DIR} missing (apt-get install dataset-fashion-mnist)")


# ------------------------------------------------------------------ exact distributed evaluation
@pytest.mark.parametrize("n", [0, 1, 7, 10, 13])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_unpadded_sampler_counts_every_sample_once(n, world):
    shards = [list(UnpaddedDistributedSampler(range(n), world, r)) for r in range(world)]
    flat = sorted(i for s in shards for i in s)
    assert flat == list(range(n))
    assert [len(UnpaddedDistributedSampler(range(n), world, r)) for r in range(world)] == [len(s) for s in shards]


def test_default_distributed_sampler_pads_ours_does_not():
    ds = list(range(13))
    padded = sum(len(list(DistributedSampler(ds, 4, r, shuffle=False))) for r in range(4))
    assert padded == 16  # what Lightning's default would evaluate: 3 samples twice
    assert sum(len(UnpaddedDistributedSampler(ds, 4, r)) for r in range(4)) == 13
    assert isinstance(UnpaddedDistributedSampler(ds, 4, 0), DistributedSampler)  # Lightning keeps it unwrapped


# ------------------------------------------------------------------ Fashion-MNIST
@needs_debian
def test_fashion_mnist_real_files_splits_and_determinism():
    dm = FashionMNISTDataModule(batch_size=32, seed=3, val_fraction=0.1, augment=False)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (54000, 6000, 10000)
    assert not set(dm.train_set.indices) & set(dm.val_set.indices)
    assert dm.num_classes == 10 and dm.input_size == (1, 28, 28)
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    labels = dm.test_set.base.labels
    assert torch.bincount(labels).tolist() == [1000] * 10  # the real test set: 1,000 per class
    again = FashionMNISTDataModule(batch_size=32, seed=3)
    again.setup()
    assert again.val_set.indices == dm.val_set.indices
    xb1, _ = next(iter(dm.train_dataloader()))
    dm2 = FashionMNISTDataModule(batch_size=32, seed=3, augment=False)
    dm2.setup()
    xb2, _ = next(iter(dm2.train_dataloader()))
    assert torch.equal(xb1, xb2)  # same seed, same first shuffled batch
    other = FashionMNISTDataModule(seed=4)
    other.setup()
    assert other.val_set.indices != dm.val_set.indices


@needs_debian
def test_fashion_mnist_subsets_and_resize():
    dm = create_datamodule("fashion-mnist", batch_size=8, train_subset=100, val_subset=20, test_subset=30,
                           image_size=32)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (100, 20, 30)
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 32, 32) and dm.input_size == (1, 32, 32)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_fashion_mnist_root_first(tmp_path, gz, layout):
    d = tmp_path if layout == "flat" else tmp_path / "FashionMNIST" / "raw"
    arrays = write_fashion_mnist(d, gz=gz)
    dm = FashionMNISTDataModule(root=str(tmp_path), batch_size=4, val_fraction=0.0, download=False, augment=False,
                                debian_dir=str(tmp_path / "none"))
    dm.setup()
    assert len(dm.train_set) == 60 and len(dm.test_set) == 20
    assert torch.equal(dm.test_set.base.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).to(torch.uint8))


def test_fashion_mnist_debian_second(tmp_path):
    deb = tmp_path / "debian"
    write_fashion_mnist(deb, n_train=30)
    found = locate_fashion_mnist(str(tmp_path / "empty"), cache_dir=str(tmp_path / "cache"), download=False,
                                 debian_dir=str(deb))
    assert found["train_images"] == deb / "train-images-idx3-ubyte.gz"


def test_fashion_mnist_nothing_names_all_three(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        locate_fashion_mnist(str(tmp_path / "mine"), cache_dir=str(tmp_path / "cache"), download=False,
                             debian_dir=str(tmp_path / "deb"))
    msg = str(e.value)
    assert "1) root=" in msg and "2) " + str(tmp_path / "deb") in msg and "3) torchvision download" in msg
    assert "\n" not in msg


def test_fashion_mnist_download_failure_is_reported(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*a, **k):
        raise RuntimeError("network unreachable")
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(FileNotFoundError, match=r"3\) torchvision download into .* \(failed: RuntimeError: network"):
        locate_fashion_mnist(None, cache_dir=str(tmp_path), download=True, debian_dir=str(tmp_path / "deb"))


def test_fashion_mnist_corrupt_file(tmp_path):
    write_fashion_mnist(tmp_path)
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    data = gzip.decompress(bad.read_bytes())
    bad.write_bytes(gzip.compress(data[:-100]))  # truncated
    dm = FashionMNISTDataModule(root=str(tmp_path), download=False)
    with pytest.raises(ValueError, match=r"corrupt Fashion-MNIST file .*t10k-images-idx3-ubyte.gz: header says"):
        dm.setup()
    bad.write_bytes(b"not a gzip file at all")
    with pytest.raises(ValueError, match=r"corrupt Fashion-MNIST file .*cannot read it"):
        FashionMNISTDataModule(root=str(tmp_path), download=False).setup()


# ------------------------------------------------------------------ CIFAR
@pytest.mark.parametrize("which,cls,nc", [("cifar10", CIFAR10DataModule, 10), ("cifar100", CIFAR100DataModule, 100)])
def test_cifar_torchvision_format(tmp_path, monkeypatch, which, cls, nc):
    written = write_cifar(tmp_path, which, per_batch=10)
    dm = cls(root=str(tmp_path), batch_size=5, val_fraction=0.2, augment=False, download=False)
    dm.setup()
    n_train = 50 if which == "cifar10" else 10
    assert len(dm.train_set) + len(dm.val_set) == n_train and len(dm.test_set) == 10 and dm.num_classes == nc
    # the fixture is torchvision's format: torchvision's own reader (MD5 check off) gives the same arrays
    import torchvision.datasets as tvd
    tv_cls = tvd.CIFAR10 if which == "cifar10" else tvd.CIFAR100
    import torchvision.datasets.cifar as tv_cifar
    monkeypatch.setattr(tv_cls, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    tv = tv_cls(str(tmp_path), train=False)
    ours = dm.test_set.base
    assert np.array_equal(tv.data, ours.images.permute(0, 2, 3, 1).numpy())
    assert tv.targets == ours.labels.tolist() == list(written["test_batch" if which == "cifar10" else "test"][1])
    assert tv.classes == ours.classes
    x, _ = next(iter(dm.test_dataloader()))
    assert x.shape == (5, 3, 32, 32)


def test_cifar_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar10: expected torchvision's layout .*cifar-10-batches-py/ with "
                                                r"data_batch_1"):
        CIFAR10DataModule(root=str(tmp_path), download=False).setup()
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"corrupt CIFAR file .*data_batch_3"):
        CIFAR10DataModule(root=str(tmp_path), download=False).setup()


def test_cifar_download_failure_is_one_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*a, **k):
        raise RuntimeError("network unreachable")
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(FileNotFoundError, match=r"cifar100: files missing under .*cifar-100-python and the torchvision "
                                                r"download failed \(RuntimeError: network unreachable\)"):
        CIFAR100DataModule(root=str(tmp_path)).setup()


# ------------------------------------------------------------------ ImageFolder
def test_imagefolder(tmp_path):
    import torchvision.datasets as tvd
    write_imagefolder(tmp_path, per_class=4)
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=16, batch_size=4, val_fraction=0.25)
    dm.setup()
    assert dm.num_classes == 3 and len(dm.test_set) == 12 and len(dm.train_set) + len(dm.val_set) == 12
    assert dm.train_set.base.classes == tvd.ImageFolder(str(tmp_path / "train")).classes
    tv = tvd.ImageFolder(str(tmp_path / "val"))
    assert [y for _, y in dm.test_set.base.samples] == tv.targets
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (4, 3, 16, 16)


def test_imagefolder_with_test_split_uses_val_for_validation(tmp_path):
    write_imagefolder(tmp_path, per_class=2, splits=("train", "val", "test"))
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=8)
    dm.setup()
    assert len(dm.train_set) == 6 and len(dm.val_set) == 6 and len(dm.test_set) == 6


def test_imagefolder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist; expected .*/train/<class>/\*.jpg"):
        ImageFolderDataModule(root=str(tmp_path / "nope")).setup()
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match=r"expected class folders in .*/train/"):
        ImageFolderDataModule(root=str(tmp_path)).setup()
    write_imagefolder(tmp_path, splits=("train",))
    with pytest.raises(FileNotFoundError, match=r"expected held-out images in .*/val/<class>/"):
        ImageFolderDataModule(root=str(tmp_path)).setup()


# ------------------------------------------------------------------ Synthetic
def test_synthetic_deterministic_balanced_any_size():
    dm = SyntheticDataModule(num_classes=4, image_size=20, in_chans=2, train_size=40, test_size=12, seed=1,
                             val_fraction=0.25, batch_size=4)
    dm.setup()
    a, ya = dm.test_set[3]
    dm2 = SyntheticDataModule(num_classes=4, image_size=20, in_chans=2, train_size=40, test_size=12, seed=1)
    dm2.setup()
    b, yb = dm2.test_set[3]
    assert torch.equal(a, b) and ya == yb and a.shape == (2, 20, 20)
    assert torch.bincount(torch.stack([dm.test_set[i][1] for i in range(12)])).tolist() == [3, 3, 3, 3]
    # classes differ by structure, not by intensity: class means of raw pixels are close
    base = dm.train_set.base
    means = [torch.stack([base.get_raw(i)[0].float() for i in range(c, 40, 4)]).mean() for c in range(4)]
    assert max(means) - min(means) < 10  # of 255


def test_bad_config_messages(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; valid names: fashion_mnist, cifar10"):
        create_datamodule("mnist")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        SyntheticDataModule(batch_size=0)
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        SyntheticDataModule(val_fraction=1.5)


def test_transforms_default_and_custom():
    from datamodules import ImageTransform
    img = torch.full((1, 10, 10), 255, dtype=torch.uint8)
    img[:, :, :5] = 0
    plain = ImageTransform(None, (0.5,), (0.5,))(img)
    assert plain.shape == (1, 10, 10) and plain.max() == 1.0 and plain.min() == -1.0
    resized = ImageTransform(16, (0.5,), (0.5,))(img)
    assert resized.shape == (1, 16, 16)
    torch.manual_seed(0)
    aug = [ImageTransform(None, (0.5,), (0.5,), augment=True)(img) for _ in range(20)]
    assert all(a.shape == (1, 10, 10) for a in aug) and any(not torch.equal(a, plain) for a in aug)
    dm = SyntheticDataModule(image_size=8, in_chans=1, train_size=8, test_size=4, val_fraction=0.0,
                             train_transform=lambda x: torch.zeros(3), eval_transform=lambda x: torch.ones(2))
    dm.setup()
    assert torch.equal(dm.train_set[0][0], torch.zeros(3)) and torch.equal(dm.test_set[0][0], torch.ones(2))


# ------------------------------------------------------------------ prepared (precomputed) splits
def _base_set(n=40, c=1, size=28, seed=0):
    from datamodules.base import TensorImageDataset
    g = torch.Generator().manual_seed(seed)
    return TensorImageDataset(torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=g),
                              torch.arange(n) % 10)


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("c,size,image_size", [(1, 28, 16), (3, 32, 20), (3, 32, None)])
def test_prepared_subset_is_bitwise_the_per_sample_transform(augment, c, size, image_size):
    """prepare() precomputes resize (and, unaugmented, normalisation) batched; every item, augmented ones
    under their per-sample seed included, must equal what the per-sample transform gives, bit for bit."""
    from datamodules.base import ImageTransform, SampleKey, Subset, sample_seed
    base = _base_set(c=c, size=size)
    idx = [3, 1, 4, 15, 9, 26, 5, 35, 8, 0]
    tf = ImageTransform(image_size, [0.3] * c, [0.4] * c, augment=augment)
    slow, fast = Subset(base, idx, tf), Subset(base, idx, tf)
    assert fast.prepare(chunk=3)  # several chunks, the last one short
    assert fast.prepared.shape == (len(idx), c, image_size or size, image_size or size)
    for k in range(len(idx)):
        key = SampleKey(k, sample_seed(7, 2, k))
        (xs, ys), (xf, yf) = slow[key], fast[key]
        assert torch.equal(xs, xf) and int(ys) == int(yf) == idx[k] % 10
        if not augment:  # plain indices too (evaluation loaders)
            assert torch.equal(slow[k][0], fast[k][0])


def test_prepare_declines_what_it_cannot_hold():
    from datamodules.base import ImageTransform, Subset
    base = _base_set()
    tf = ImageTransform(16, [0.5], [0.5])
    assert not Subset(base, range(10), tf).prepare(max_bytes=10 * 16 * 16 * 4 - 1)  # over the cap
    assert Subset(base, range(10), tf).prepare(max_bytes=10 * 16 * 16 * 4)
    assert not Subset(base, range(10), lambda x: x.float()).prepare()  # not an ImageTransform
    as_list = [base[k] for k in range(10)]  # no uint8 image tensor to batch over
    s = Subset(as_list, range(10), tf)
    assert not s.prepare() and s.prepared is None and s[0][0].shape == (1, 16, 16)


@needs_debian
def test_fashion_mnist_splits_are_prepared():
    dm = FashionMNISTDataModule(image_size=16, val_subset=100, test_subset=200, train_subset=300, augment=False)
    dm.setup()
    for part, n in ((dm.train_set, 300), (dm.val_set, 100), (dm.test_set, 200)):
        assert part.prepared is not None and part.prepared_done and part.prepared.shape == (n, 1, 16, 16)
    x, y = dm.test_set[5]
    raw, label = dm.test_set.base.get_raw(dm.test_set.indices[5])
    assert torch.equal(x, dm.test_set.transform(raw)) and int(y) == int(label)
