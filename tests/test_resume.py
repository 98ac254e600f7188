"""Resume you can trust: the training loader's state round trip (mid-epoch and at the end of an epoch,
in the main process and with worker processes, one rank and two), and a Lightning run resumed from a
checkpoint in the middle of training that ends with the weights of the uninterrupted run, bit for bit
(CPU, one thread; a model with dropout, augmented data). The runner's own end-to-end version, a cell
killed with SIGKILL and rerun, is tests/test_runner_e2e.py::test_resumed_cell_equals_uninterrupted_cell_bitwise.
"""
import os

import lightning as L
import pytest
import torch
import torch.nn as nn
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DistributedSampler

from datamodules import SyntheticDataModule
from datamodules.base import ResumableSampler, SampleKey, sample_seed
from modules.lightning import ImageClassifier, rng_states, set_rng_states


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _dm(num_workers=0, augment=True, train_size=44, batch_size=4, seed=3):
    # 44 samples, val_fraction 0.25: 33 training samples, 9 batches of 4 (the last one has 1)
    dm = SyntheticDataModule(num_classes=3, image_size=8, in_chans=1, train_size=train_size, test_size=6,
                             val_fraction=0.25, batch_size=batch_size, seed=seed, num_workers=num_workers,
                             augment=augment)
    dm.setup()
    return dm


def _epoch(dl, epoch):
    dl.sampler.set_epoch(epoch)
    return list(dl)


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


# ------------------------------------------------------------------ the sampler
@pytest.mark.parametrize("world", [1, 2])
def test_sampler_state_resumes_mid_pass_and_after_a_finished_one(world):
    ds = list(range(11))
    for rank in range(world):
        full = ResumableSampler(ds, seed=5, num_replicas=world, rank=rank)
        assert isinstance(full, DistributedSampler)
        full.set_epoch(2)
        whole = list(full)
        assert all(isinstance(k, SampleKey) and k.seed == sample_seed(5, 2, k.index) for k in whole)
        s = ResumableSampler(ds, seed=5, num_replicas=world, rank=rank)
        s.set_epoch(2)
        it = iter(s)
        head = [next(it) for _ in range(3)]
        state = s.state_dict()
        assert state == {"epoch": 2, "yielded": 3}
        t = ResumableSampler(ds, seed=5, num_replicas=world, rank=rank)
        t.load_state_dict(state)
        assert t.state_dict() == state  # saving again before iterating keeps the position
        assert head + list(t) == whole
        # a finished pass resumes with the next epoch, from its start
        t.set_epoch(2)
        assert list(t) == whole
        u = ResumableSampler(ds, seed=5, num_replicas=world, rank=rank)
        u.load_state_dict(t.state_dict())
        full.set_epoch(3)
        assert list(u) == list(full) and list(u) != whole
    # the ranks' shards cover the set (padded to a multiple of the world size, as DistributedSampler)
    shards = [[k.index for k in ResumableSampler(ds, seed=5, num_replicas=world, rank=r)] for r in range(world)]
    assert sorted(set(i for s in shards for i in s)) == ds and sum(map(len, shards)) == -(-11 // world) * world


def test_sampler_refuses_a_state_of_another_set():
    s = ResumableSampler(list(range(5)))
    with pytest.raises(ValueError, match="handed out of a pass of 5"):
        s.load_state_dict({"epoch": 0, "yielded": 9})


# ------------------------------------------------------------------ the loader (Lightning calls these)
@pytest.mark.parametrize("saved_with,loaded_with", [(0, 0), (2, 2), (0, 2), (2, 0)])  # worker processes
@pytest.mark.parametrize("cut", [3, 9])  # in the middle of epoch 0; after its last batch
def test_train_loader_state_round_trip(saved_with, loaded_with, cut):
    dl = _dm(saved_with).train_dataloader()
    assert hasattr(dl, "state_dict") and hasattr(dl, "load_state_dict")
    ref = _epoch(dl, 0) + _epoch(dl, 1)
    assert len(ref) == 18
    dl = _dm(saved_with).train_dataloader()
    dl.sampler.set_epoch(0)
    it = iter(dl)
    head = [next(it) for _ in range(cut)]
    assert _same(head, ref[:cut])
    state = dl.state_dict()
    del it, dl
    fresh = _dm(loaded_with).train_dataloader()
    fresh.load_state_dict(state)
    rest = list(fresh)  # what Lightning does: the next iterator continues where the state was taken
    if cut == 9:  # the epoch had ended: Lightning starts epoch 1 (and calls set_epoch(1) first)
        assert _same(rest, ref[9:])
    else:
        assert _same(rest, ref[cut:9])
        assert _same(_epoch(fresh, 1), ref[9:])


def test_train_batches_do_not_depend_on_workers_and_are_augmented():
    a, b = _dm(0).train_dataloader(), _dm(2).train_dataloader()
    e0 = _epoch(a, 0)
    assert _same(e0, _epoch(b, 0)) and _same(_epoch(a, 1), _epoch(b, 1))
    plain = _epoch(_dm(0, augment=False).train_dataloader(), 0)
    assert [y.tolist() for _, y in e0] == [y.tolist() for _, y in plain]  # same order
    assert not _same(e0, plain)  # augmented
    # loading a sample leaves the caller's RNG where it was
    torch.manual_seed(0)
    before = torch.get_rng_state()
    _dm(0).train_set[SampleKey(0, 123)]
    assert torch.equal(before, torch.get_rng_state())


def test_rng_states_round_trip_through_a_weights_only_load(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    torch.save({"rng_states": rng_states()}, tmp_path / "s.pt")
    draws = (torch.rand(3), random.random(), np.random.rand())
    set_rng_states(torch.load(tmp_path / "s.pt", weights_only=True)["rng_states"])
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(draws[0], again[0]) and draws[1:] == again[1:]


# ------------------------------------------------------------------ a resumed Lightning run
class _Net(nn.Module):
    """Small CNN with BatchNorm and dropout: the run draws random numbers in every step."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.3), nn.Linear(16, 3))

    def forward(self, x):
        return self.body(x)


def _fit(tmp_path, name, num_workers, ckpt=None):
    L.seed_everything(0, workers=True, verbose=False)
    clf = ImageClassifier(_Net(), num_classes=3, lr=0.05, warmup_epochs=0.5)
    save = ModelCheckpoint(dirpath=str(tmp_path / name), filename="{step}", every_n_train_steps=1, save_top_k=-1)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, callbacks=[save],
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        deterministic=True, default_root_dir=str(tmp_path))
    L.seed_everything(0, workers=True, verbose=False)
    trainer.fit(clf, datamodule=_dm(num_workers), ckpt_path=ckpt)
    assert trainer.global_step == 18
    return {k: v.clone() for k, v in clf.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 2])
def test_resumed_fit_equals_uninterrupted_fit_bitwise(tmp_path, num_workers):
    whole = _fit(tmp_path, "whole", num_workers)
    # mid-epoch 0, the end of epoch 0 (its last batch), mid-epoch 1
    for step in (4, 9, 13):
        ckpt = os.path.join(tmp_path, "whole", f"step={step}.ckpt")
        assert os.path.isfile(ckpt), sorted(os.listdir(tmp_path / "whole"))
        got = _fit(tmp_path, f"from{step}", num_workers, ckpt=ckpt)
        assert got.keys() == whole.keys()
        differ = [k for k in whole if not torch.equal(whole[k], got[k])]
        assert not differ, f"resumed from step {step}: {differ}"


def test_samples_without_augmentation_skip_the_seeding(monkeypatch):
    """A transform that draws nothing gets no per-sample seed (forking the RNG per sample cost ~20% of a
    small model's training step); the item is the same either way, and augmenting transforms are seeded."""
    from datamodules.base import ImageTransform, Subset

    base = [(torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8), k % 10) for k in range(6)]
    plain = Subset(base, range(6), ImageTransform(16, [0.5], [0.5], augment=False))
    aug = Subset(base, range(6), ImageTransform(16, [0.5], [0.5], augment=True))
    want = [plain[k][0] for k in range(6)]
    forks = []
    real = torch.random.fork_rng
    monkeypatch.setattr(torch.random, "fork_rng", lambda *a, **k: forks.append(1) or real(*a, **k))
    got = [plain[SampleKey(k, sample_seed(0, 0, k))][0] for k in range(6)]
    assert forks == [] and all(torch.equal(a, b) for a, b in zip(got, want))
    a1 = aug[SampleKey(3, 1234)][0]
    assert len(forks) == 1 and torch.equal(a1, aug[SampleKey(3, 1234)][0])
