"""Resume you can trust: the training loader's state round trip (mid-epoch and at the end of an epoch,
in the main process and with worker processes, one rank and two)."""
import pytest
import torch
from torch.utils.data import DistributedSampler

from datamodules import SyntheticDataModule
from datamodules.base import ResumableSampler, SampleKey, sample_seed


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
