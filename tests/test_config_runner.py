"""Matrix config validation and deterministic cell expansion (bench/runner/config.py, cells.py)."""
import copy

import pytest
import yaml

from bench.runner import cells as C
from bench.runner.config import load_config, validate_config

BASE = {
    "name": "t",
    "matrix": {"backbones": ["resnet26"], "operators": ["conv", "sa", "acmix"],
               "shifts": ["tensor", "multigroup"], "mixings": ["learnable"], "datasets": ["fashion_mnist"],
               "seeds": [0, 1]},
    "model": {"stem": "small", "widths": [8, 16, 32, 64]},
    "trainer": {"max_epochs": 1},
    "groups": [{"name": "matched", "reference": {"op": "conv"}, "tolerance": 0.05}],
}


def cfg(**patch):
    raw = copy.deepcopy(BASE)
    for dotted, v in patch.items():
        sec, _, key = dotted.partition("__")
        if key:
            raw.setdefault(sec, {})[key] = v
        else:
            raw[sec] = v
    return validate_config(raw)


def test_defaults_filled_and_expansion_order():
    c = cfg()
    assert c["trainer"]["devices"] == 1 and c["optim"]["optimizer"] == "sgd"
    cells = C.expand(c)
    # per seed: conv, sa, acmix x 2 shifts = 4 cells; conv/sa carry no shift/mixing
    assert len(cells) == 8
    assert [(x["op"], x["shift"], x["seed"]) for x in cells[:4]] == [
        ("conv", None, 0), ("sa", None, 0), ("acmix", "tensor", 0), ("acmix", "multigroup", 0)]
    assert cells[0]["cell_id"].startswith("resnet26-conv-fashion_mnist-s0-")
    assert cells[2]["cell_id"].startswith("resnet26-acmix-tensor-learnable-fashion_mnist-s0-")
    assert len({x["cell_id"] for x in cells}) == 8
    assert cells[2]["overrides"] == {"num_classes": 10, "in_chans": 1, "img_size": 28, "stem": "small",
                                     "shift": "tensor", "mixing": "learnable"}


def test_ids_stable_and_sensitive():
    a = [x["cell_id"] for x in C.expand(cfg())]
    b = [x["cell_id"] for x in C.expand(cfg())]
    assert a == b
    # a different epoch count changes every id; an operational setting (workers) changes none
    assert set(a).isdisjoint(x["cell_id"] for x in C.expand(cfg(trainer__max_epochs=2)))
    assert a == [x["cell_id"] for x in C.expand(cfg(data__num_workers=3))]
    # adding a seed keeps the existing ids
    more = [x["cell_id"] for x in C.expand(cfg(matrix__seeds=[0, 1, 2]))]
    assert set(a) <= set(more) and len(more) == 12


def test_group_reference_is_the_conv_cell():
    cells = C.expand(cfg())
    conv0 = cells[0]
    for x in cells:
        assert x["group"] == "matched" and x["tolerance"] == 0.05
        if x["seed"] == 0:
            assert x["reference_cell"] == conv0["cell_id"]


def test_exclude():
    c = cfg(matrix__exclude=[{"op": "acmix", "shift": "tensor", "seed": 1}])
    assert len(C.expand(c)) == 7


@pytest.mark.parametrize("patch, words", [
    ({"trainer__devices": 0}, ["trainer.devices", "0", ">= 1"]),
    ({"trainer__strategy": "dpp"}, ["trainer.strategy", "'dpp'", "'ddp'"]),
    ({"trainer__precison": "16"}, ["trainer.precison", "keys", "precision"]),
    ({"matrix__operators": ["conv", "attention"]}, ["matrix.operators[1]", "'attention'", "'sa'"]),
    ({"matrix__seeds": [0, 0]}, ["matrix.seeds[1]", "duplicate"]),
    ({"matrix__shifts": ["grouped"]}, ["matrix.shifts[0]", "'multigroup'"]),
    ({"optim__lr": "fast"}, ["optim.lr", "'fast'", "a number"]),
    ({"optim__optimizer": "lamb"}, ["optim.optimizer", "'lamb'", "'adamw'"]),
    ({"data__batch_size": True}, ["data.batch_size", "True", "an integer"]),
    ({"trainer__limit_train_batches": 1.5}, ["trainer.limit_train_batches", "1.5", "fraction"]),
    ({"model__widths": [8, -1]}, ["model.widths", "positive"]),
    ({"groups": [{"name": "g", "reference": {"opp": "conv"}}]}, ["groups[0].reference.opp", "'op'"]),
    ({"groups": [{"name": "g", "reference": {"op": "conv"}, "tolerance": 2}]}, ["groups[0].tolerance", "[0.0, 1.0]"]),
    ({"colour": "red"}, ["'colour'", "top-level keys"]),
])
def test_errors_name_key_value_and_allowed(patch, words):
    with pytest.raises(ValueError) as ei:
        cfg(**patch)
    msg = str(ei.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_registry_check_names_alternatives():
    raw = copy.deepcopy(BASE)
    raw["matrix"]["backbones"] = ["swin_t"]
    with pytest.raises(ValueError, match=r"swin_t-conv.*allowed for 'swin_t': swin_t-acmix, swin_t-sa"):
        validate_config(raw, known_models=["swin_t-sa", "swin_t-acmix", "resnet26-conv"])


def test_load_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="configs/default.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("matrix: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(BASE))
    c = load_config(good, {"trainer.max_epochs": 3}, check_registry=False)
    assert c["trainer"]["max_epochs"] == 3


def test_shards_partition_the_matrix():
    cells = C.expand(cfg(matrix__seeds=[0, 1, 2]))
    parts = [C.shard(cells, C.parse_shard(f"{i}/5")) for i in range(5)]
    ids = [x["cell_id"] for p in parts for x in p]
    assert sorted(ids) == sorted(x["cell_id"] for x in cells) and len(ids) == len(set(ids))
    for bad in ("5/5", "1", "a/b", "-1/2"):
        with pytest.raises(ValueError, match="--shard"):
            C.parse_shard(bad)


@pytest.mark.parametrize("name, n", [("default", 24), ("shifts", 15), ("resnet_imagenet", 9), ("swin_t_imagenet", 5),
                                     ("cifar100", 12)])
def test_shipped_configs_validate_against_the_registry(name, n):
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", f"{name}.yaml")
    c = load_config(path)  # registry check on
    cells = C.expand(c)
    assert len(cells) == n
    assert len({x["cell_id"] for x in cells}) == n


def test_measure_threads_auto_default_and_errors():
    from bench.runner.config import validate_config
    from bench.runner.execute import _processes_per_machine
    from bench.runner.measure import physical_cores, resolve_threads

    base = {"matrix": {"backbones": ["resnet26"], "operators": ["conv"], "datasets": ["fashion_mnist"]}}
    cfg = validate_config(base)
    assert cfg["measure"]["threads"] == "auto"
    for ok in (1, 3, None, "auto"):
        assert validate_config({**base, "measure": {"threads": ok}})["measure"]["threads"] == ok
    for bad in (0, -2, "all", True, 1.5):
        with pytest.raises(ValueError, match="measure.threads.*'auto'"):
            validate_config({**base, "measure": {"threads": bad}})
    import os

    n = physical_cores()
    assert 1 <= n <= os.cpu_count()
    assert resolve_threads("auto") == n and resolve_threads(3) == 3 and resolve_threads(None) is None
    assert resolve_threads("auto", processes_per_machine=4 * n) == 1
    ddp = validate_config({**base, "trainer": {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}})
    assert _processes_per_machine(ddp) == 2 and _processes_per_machine(cfg) == 1
