"""`acmix-bench benchmark`: model expansion, one real case per mode, the CLI's formats and errors."""
import csv
import io
import json

import pytest
import torch

from bench import benchmark as bm
from bench.cli import main


def test_expand_models_wildcards_commas_and_order():
    got = bm.expand_models("resnet26-sa,resnet26-*")
    assert got[0] == "resnet26-sa"
    assert set(got) == {"resnet26-conv", "resnet26-dconv", "resnet26-sa", "resnet26-acmix"}
    assert len(got) == len(set(got))
    with pytest.raises(ValueError, match="matches no registered model"):
        bm.expand_models("resnet27-*")


def _case(**kw):
    base = dict(model="resnet26-conv", batch_size=2, img_size=32, warmup=1, iters=3, threads=1, in_chans=1,
                num_classes=10)
    base.update(kw)
    return bm.Case(**base)


def test_run_case_both_fills_every_column():
    from bench.flops import count_model

    case = _case()
    row = bm.run_case(case)
    assert list(row) == bm.COLUMNS
    model = bm.build(case)
    assert row["param_count"] == sum(p.numel() for p in model.parameters())
    assert row["macs"] == count_model(model, input_size=(1, 32, 32), voices=("formula",)).total("formula")
    for k in ("infer", "train"):
        ms = row[f"{k}_step_ms"]
        assert ms > 0 and row[f"{k}_step_ms_iqr"] >= 0
        assert row[f"{k}_samples_per_sec"] == pytest.approx(2 / ms * 1e3)
    assert row["stage2_backend"] == "-"
    assert row["peak_mem_mb"] >= 0


def test_train_step_updates_the_weights_and_inference_only_leaves_train_empty(monkeypatch):
    row = bm.run_case(_case(bench="inference", model="resnet26-acmix"))
    assert row["train_step_ms"] is None and row["infer_step_ms"] > 0
    assert row["stage2_backend"] in ("cpp", "torch")

    case = _case(bench="train")
    before = bm.build(case).state_dict()
    built = []
    monkeypatch.setattr(bm, "build", lambda c, _orig=bm.build: built.append(_orig(c)) or built[-1])
    row = bm.run_case(case)
    after = built[0].state_dict()
    assert row["infer_step_ms"] is None and row["train_step_ms"] > 0
    assert any(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())


def test_bf16_mixed_and_channels_last_run():
    row = bm.run_case(_case(bench="inference", precision="bf16-mixed", channels_last=True))
    assert row["infer_step_ms"] > 0 and row["channels_last"] is True and row["precision"] == "bf16-mixed"


def test_bad_values_are_one_line_errors(capsys):
    assert main(["benchmark", "--model", "nope-*"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "matches no registered model" in err
    assert main(["benchmark", "--model", "resnet26-conv", "--batch-size", "0"]) == 2
    assert "positive integers" in capsys.readouterr().err


def test_cli_csv_sweep_and_output_file(tmp_path, capsys):
    out = tmp_path / "b.csv"
    rc = main(["benchmark", "--model", "resnet26-conv", "--batch-size", "1,2", "--img-size", "32",
               "--in-chans", "1", "--num-classes", "10", "--warmup", "0", "--iters", "2", "--threads", "1",
               "--bench", "inference", "--format", "csv", "--output", str(out)])
    assert rc == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["batch_size"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == bm.COLUMNS
    assert float(rows[1]["infer_samples_per_sec"]) > 0


def test_fresh_process_gives_a_json_row(capsys):
    rc = main(["benchmark", "--model", "resnet26-conv", "--batch-size", "2", "--img-size", "32",
               "--in-chans", "1", "--num-classes", "10", "--warmup", "0", "--iters", "2", "--threads", "1",
               "--bench", "inference", "--format", "json", "--fresh-process"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["model"] == "resnet26-conv" and rows[0]["infer_step_ms"] > 0


def test_list_expands_like_a_run(capsys):
    """--list shows what --model would run: comma lists and wildcards, in order."""
    assert main(["benchmark", "--list", "--model", "resnet26-conv,swin_t-*"]) == 0
    assert capsys.readouterr().out.split() == ["resnet26-conv", "swin_t-acmix", "swin_t-sa"]
