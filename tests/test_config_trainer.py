"""Config: any Lightning Trainer argument (checked against Trainer's signature), ImageClassifier's optimisation
arguments, `--set KEY=VALUE` for any key, the report section and measure.threads: auto."""
import glob
import io
import os
from contextlib import redirect_stdout

import pandas as pd
import pytest
import yaml

from bench.cli import main as cli_main
from bench.runner.config import SECTIONS, load_config, parse_set, validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = {"matrix": {"backbones": ["resnet26"], "operators": ["conv"], "datasets": ["synthetic"]}}


def cfg(**sections):
    raw = {**BASE, **sections}
    return validate_config(raw)


def one_line_error(**sections) -> str:
    with pytest.raises(ValueError) as ei:
        cfg(**sections)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def test_every_shipped_config_loads_with_no_new_keys():
    """configs/*.yaml still load, and sections hold exactly the keys they held before (cell ids unchanged)."""
    paths = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
    assert paths
    for p in paths:
        c = load_config(p)
        for sec in ("trainer", "optim"):
            raw = (yaml.safe_load(open(p)) or {}).get(sec) or {}
            assert set(c[sec]) == set(SECTIONS[sec]) | set(raw), (p, sec)


def test_trainer_settings_the_old_schema_refused():
    c = cfg(trainer={"devices": "auto", "precision": "bf16-mixed", "sync_batchnorm": True,
                     "accumulate_grad_batches": 4, "gradient_clip_val": 1, "gradient_clip_algorithm": "value",
                     "max_time": "00:01:00:00", "val_check_interval": 0.5, "benchmark": True, "strategy": "ddp_spawn",
                     "detect_anomaly": False, "deterministic": True})
    t = c["trainer"]
    assert t["devices"] == "auto" and t["precision"] == "bf16-mixed" and t["sync_batchnorm"] is True
    assert t["max_time"] == "00:01:00:00" and t["val_check_interval"] == 0.5
    assert cfg(trainer={"devices": [0, 1]})["trainer"]["devices"] == [0, 1]
    assert cfg(trainer={"precision": 16})["trainer"]["precision"] == 16  # Trainer's Literal[64, 32, 16]


@pytest.mark.parametrize("trainer, words", [
    ({"sync_batchnorm": "yes"}, ["'trainer.sync_batchnorm'", "'yes'", "true/false", "Trainer's sync_batchnorm"]),
    ({"precision": "bf17"}, ["'trainer.precision'", "'bf17'", "'bf16-mixed'", "'32-true'"]),
    ({"accelerator": "gpux"}, ["'trainer.accelerator'", "'gpux'", "'cpu'", "'cuda'"]),
    ({"strategy": "dpp"}, ["'trainer.strategy'", "'dpp'", "'ddp'", "'fsdp'"]),
    ({"max_time": 3}, ["'trainer.max_time'", "got 3", "a string"]),
    ({"callbacks": []}, ["'trainer.callbacks'", "the runner sets those"]),
    ({"no_such_setting": 1}, ["'trainer.no_such_setting'", "any lightning.pytorch.Trainer argument"]),
    ({"devices": 0}, ["'trainer.devices'", "got 0", "'auto'"]),
])
def test_trainer_errors_name_key_value_and_allowed(trainer, words):
    msg = one_line_error(trainer=trainer)
    for w in words:
        assert w in msg, (w, msg)


def test_optim_follows_image_classifier():
    c = cfg(optim={"optimizer": "adamw", "betas": [0.9, 0.95], "lr": 0.001})
    assert c["optim"]["betas"] == [0.9, 0.95] and c["optim"]["optimizer"] == "adamw"
    for optim, words in (({"optimizer": "adam"}, ["'optim.optimizer'", "'adam'", "'sgd'", "'adamw'"]),
                         ({"schedule": "step"}, ["'optim.schedule'", "'cosine'", "'none'"]),
                         ({"betas": [0.9]}, ["'optim.betas'", "[0.9]", "tuple[a number, a number]"]),
                         ({"model_kwargs": {}}, ["'optim.model_kwargs'", "keys optimizer, lr"])):
        msg = one_line_error(optim=optim)
        for w in words:
            assert w in msg, (w, msg)


def test_report_section_and_threads_auto():
    assert cfg()["report"] == {"run": True, "margin": 0.5}
    assert cfg(report=False)["report"] == {"run": False, "margin": 0.5}
    assert cfg(report={"margin": 0.25})["report"] == {"run": True, "margin": 0.25}
    assert "'report.margin'" in one_line_error(report={"margin": -1})
    assert "'report.colour'" in one_line_error(report={"colour": "red"})
    assert cfg(measure={"threads": "auto"})["measure"]["threads"] == "auto"
    msg = one_line_error(measure={"threads": "many"})
    assert "'measure.threads'" in msg and "'auto'" in msg
    from bench.runner.measure import physical_cores
    assert 1 <= physical_cores() <= os.cpu_count()


def test_parse_set_reads_yaml_values():
    assert parse_set(["data.batch_size=64", "trainer.devices=auto", "trainer.max_epochs=null",
                      "matrix.seeds=[0, 1]", "optim.lr=1e-3", "name=x=y"]) == {
        "data.batch_size": 64, "trainer.devices": "auto", "trainer.max_epochs": None, "matrix.seeds": [0, 1],
        "optim.lr": 1e-3, "name": "x=y"}
    for bad in ("data.batch_size", "=3", "data..x=1", "a=[1,"):
        with pytest.raises(ValueError, match="--set"):
            parse_set([bad])


def _cli(*argv):
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = cli_main(list(argv))
    return rc, buf.getvalue()


def test_set_from_the_command_line(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({**BASE, "report": False, "trainer": {"accelerator": "cpu"}}))
    rc, base = _cli("run", str(p), "--dry-run", "--format", "csv")
    assert rc == 0
    rc, text = _cli("run", str(p), "--dry-run", "--format", "csv", "--set", "data.batch_size=32",
                    "--set", "trainer.sync_batchnorm=true", "--set", "matrix.seeds=[0, 1]")
    assert rc == 0, text
    ids, ids2 = set(pd.read_csv(io.StringIO(base)).cell_id), list(pd.read_csv(io.StringIO(text)).cell_id)
    assert len(ids2) == 2 and ids.isdisjoint(ids2)  # the settings are part of the cell ids
    assert cli_main(["run", str(p), "--dry-run", "--set", "data.batch_size=many"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'data.batch_size'" in err and "'many'" in err and "an integer" in err
    assert cli_main(["run", str(p), "--dry-run", "--set", "trainer.precision=bf17"]) == 2
    assert "'trainer.precision'" in capsys.readouterr().err


def test_extra_trainer_arguments_reach_the_trainer(tmp_path):
    from bench.runner.execute import make_trainer

    c = cfg(trainer={"accelerator": "cpu", "gradient_clip_val": 0.5, "gradient_clip_algorithm": "value",
                     "val_check_interval": 0.25, "check_val_every_n_epoch": 2, "max_time": "00:00:30:00",
                     "num_sanity_val_steps": 1})
    tr = make_trainer(c, [], str(tmp_path), progress=False)
    assert tr.gradient_clip_val == 0.5 and tr.gradient_clip_algorithm == "value"
    assert tr.val_check_interval == 0.25 and tr.check_val_every_n_epoch == 2 and tr.num_sanity_val_steps == 1
    from lightning.pytorch.callbacks import Timer
    assert any(isinstance(cb, Timer) for cb in tr.callbacks)  # Lightning's own handling of max_time
