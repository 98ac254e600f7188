"""Result records: schema validation, atomic writes, results table rebuilt from records."""
import json
import os

import pandas as pd
import pytest

from bench.runner import records as R


def make_record(cell_id="m-fashion_mnist-s0-abcdef12", status="ok", **kw):
    rec = {
        "schema": R.SCHEMA, "cell_id": cell_id, "status": status, "reason": None if status == "ok" else "why",
        "cell": {"model": "resnet26-acmix", "backbone": "resnet26", "op": "acmix", "shift": "tensor",
                 "mixing": "learnable", "dataset": "fashion_mnist", "seed": 0, "group": "g", "overrides": {}},
        "config": {"trainer": {}, "data": {}, "optim": {}, "measure": {}},
        "widths": [8, 16, 32, 64],
        "counts": {"unit": "MACs", "input_size": [1, 28, 28], "voices": {
            "formula": {"stage1": {"params": 10, "macs": 100}, "total": {"params": 50, "macs": 1000}},
            "fvcore": {"total": {"params": 50, "macs": 990}}}},
        "match": {"group": "g", "reference_cell": "ref", "target_macs": 1010, "macs": 1000, "rel_error": -0.0099,
                  "tolerance": 0.01},
        "metrics": {"top1": 0.8, "top5": 0.99, "loss": 0.5, "val_top1": 0.79, "epochs": 1, "steps": 10},
        "speed": {"threads": 2, "device": "cpu", "infer_samples_per_s": {"median": 100.0, "iqr": 5.0, "n": 7},
                  "latency_b1_ms": {"median": 3.0, "iqr": 0.1, "n": 7},
                  "train_samples_per_s": {"median": 30.0, "iqr": 2.0, "n": 9}, "peak_mem_mb": None},
        "mixing_by_depth": [{"layer": "layer1.0.conv2", "depth": 0, "alpha": 0.4, "beta": 0.6}],
        "wall_s": 12.5, "env": R.environment(), "started_at": R.now(), "finished_at": R.now(),
    }
    rec.update(kw)
    return rec


def test_valid_record_roundtrip(tmp_path):
    rec = make_record()
    p = R.write_record(str(tmp_path), rec)
    assert p == str(tmp_path / "cells" / (rec["cell_id"] + ".json"))
    assert R.read_record(str(tmp_path), rec["cell_id"]) == json.loads(json.dumps(rec))
    assert os.listdir(tmp_path / "cells") == [rec["cell_id"] + ".json"]  # no temporary file left behind
    env = rec["env"]
    assert env["torch"] and env["lightning"] and env["threads"] >= 1 and "git_commit" in env


@pytest.mark.parametrize("mutate, word", [
    (lambda r: r.pop("metrics"), "metrics"),
    (lambda r: r.update(status="exploded"), "status"),
    (lambda r: r.update(status="failed", reason=None), "reason"),
    (lambda r: r.update(schema="v0"), "schema"),
    (lambda r: r["counts"].update(unit="FLOPs"), "MACs"),
    (lambda r: r["counts"]["voices"]["formula"]["total"].update(macs=1.5), "integer"),
    (lambda r: r["speed"]["train_samples_per_s"].pop("iqr"), "iqr"),
    (lambda r: r["env"].pop("git_commit"), "git_commit"),
    (lambda r: r["match"].pop("rel_error"), "rel_error"),
    (lambda r: r["mixing_by_depth"][0].pop("beta"), "beta"),
])
def test_invalid_records_rejected(mutate, word):
    rec = make_record()
    mutate(rec)
    with pytest.raises(ValueError, match=word):
        R.validate_record(rec)


def test_nan_becomes_null_and_failed_record_valid(tmp_path):
    rec = make_record(status="nan", metrics={"top1": None, "top5": None, "loss": float("nan"), "val_top1": None,
                                             "epochs": 0, "steps": 3})
    R.write_record(str(tmp_path), rec)
    back = R.read_record(str(tmp_path), rec["cell_id"])
    assert back["metrics"]["loss"] is None
    R.validate_record(back)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = str(tmp_path / "x.json")
    R.atomic_write_json(p, {"a": 1})

    class Boom:
        pass
    with pytest.raises(TypeError):
        R.atomic_write_json(p, {"a": Boom()})
    assert json.load(open(p)) == {"a": 1}
    assert os.listdir(tmp_path) == ["x.json"]


def test_results_table(tmp_path):
    out = str(tmp_path)
    R.write_record(out, make_record("b-cell"))
    R.write_record(out, make_record("a-cell", status="oom", metrics=None, speed=None, counts=None,
                                    reason="OutOfMemoryError: CUDA out of memory"))
    df = R.rebuild_results(out)
    need = "cell_id,status,model,op,shift,mixing,dataset,seed,params,macs,top1,top5,train_samples_per_s," \
           "infer_samples_per_s,peak_mem_mb,wall_s".split(",")
    csv = pd.read_csv(tmp_path / "results.csv")
    assert list(csv.columns[:len(need)]) == need
    ok = csv[csv.cell_id == "b-cell"].iloc[0]
    assert ok.params == 50 and ok.macs == 1000 and ok.counts_voice == "formula"  # formula voice first
    assert ok.train_samples_per_s == 30.0 and ok.infer_samples_per_s == 100.0 and ok.latency_b1_ms == 3.0
    bad = csv[csv.cell_id == "a-cell"].iloc[0]
    assert bad.status == "oom" and "out of memory" in bad.reason and pd.isna(bad.top1)
    assert len(df) == 2
    if (tmp_path / "results.parquet").exists():
        assert len(pd.read_parquet(tmp_path / "results.parquet")) == 2


def test_fvcore_fallback_for_params_and_macs(tmp_path):
    rec = make_record()
    del rec["counts"]["voices"]["formula"]
    R.write_record(str(tmp_path), rec)
    row = R.rebuild_results(str(tmp_path)).iloc[0]
    assert row.macs == 990 and row.counts_voice == "fvcore"


def test_events_log_appends_lines(tmp_path):
    for i in range(3):
        R.log_event(str(tmp_path), "finish", f"c{i}", status="ok")
    lines = [json.loads(x) for x in open(tmp_path / "events.jsonl")]
    assert [x["cell_id"] for x in lines] == ["c0", "c1", "c2"]


def test_close_distributed_tears_down_the_process_group(tmp_path):
    """run_matrix ends by destroying the DDP process group: gloo's threads left alive at interpreter exit can
    abort the process (exit -6) after every record is written."""
    import torch.distributed as dist

    from bench.runner.execute import close_distributed

    close_distributed()  # no group: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    assert dist.is_initialized()
    close_distributed()
    assert not dist.is_initialized()


def test_quiet_runs_hide_lightnings_leafspec_deprecation():
    """Libraries call torch APIs torch deprecated (Lightning's LeafSpec, torch.jit.script); a user cannot act on
    them, so quiet runs hide them, and only them."""
    import warnings

    from bench.runner.execute import _quiet_lightning
    msgs = ["`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead.",
            "`torch.jit.script` is deprecated. Please switch to `torch.compile` or `torch.export`."]
    for verbose, shown in ((False, 0), (True, 2)):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with _quiet_lightning(verbose):
                for m in msgs:
                    warnings.warn(m, FutureWarning)
            warnings.warn("a warning of the suite's own", UserWarning)
        assert len(seen) == shown + 1
