"""Every row of docs/bad-input.md: the bad input, the one-line message it gives, and that nothing already computed
is lost. Cells run on the synthetic dataset (no download, no Fashion-MNIST needed)."""
import errno
import io
import json
import os
from contextlib import redirect_stdout

import pytest
import yaml

from bench.cli import main
from bench.runner import records as R


def config(tmp_path, seeds=(0,), **extra):
    p = tmp_path / "c.yaml"
    raw = {"name": "bad", "matrix": {"backbones": ["resnet26"], "operators": ["conv"], "datasets": ["synthetic"],
                                     "seeds": list(seeds)},
           "model": {"stem": "small", "widths": [8, 8, 8, 8]},
           "trainer": {"accelerator": "cpu", "max_steps": 3, "log_every_n_steps": 1, "checkpoint_every_n_steps": 1},
           "data": {"batch_size": 8, "train_subset": 32, "val_subset": 8, "test_subset": 8, "image_size": 16},
           "measure": {"voices": ["formula"], "speed": False, "threads": 1}, "report": False}
    for k, v in extra.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    p.write_text(yaml.safe_dump(raw))
    return str(p)


def run(*argv):
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(list(argv))
    return rc, buf.getvalue()


def one_line_err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and err.count("\n") == 0, err
    return err


@pytest.mark.parametrize("make, argv_tail, words", [
    (lambda t: str(t / "missing.yaml"), ["--dry-run"], ["config file", "not found", "configs/default.yaml"]),
    (lambda t: (t / "x.yaml").write_text("matrix: [unclosed\n") and str(t / "x.yaml"), ["--dry-run"],
     ["is not valid YAML"]),
    (lambda t: (t / "x.yaml").write_text("trainers: {}\nmatrix: {}\n") and str(t / "x.yaml"), ["--dry-run"],
     ["config key 'trainers'", "top-level keys"]),
    (lambda t: config(t, trainer={"precision": "bf17"}), ["--dry-run"], ["'trainer.precision'", "'bf16-mixed'"]),
    (lambda t: config(t, data={"batch_size": 0}), ["--dry-run"], ["'data.batch_size'", "got 0", ">= 1"]),
    (lambda t: config(t), ["--dry-run", "--set", "data.batch_size"], ["--set", "KEY=VALUE"]),
    (lambda t: config(t), ["--dry-run", "--shard", "3/2"], ["--shard '3/2'", "0 <= i < n"]),
    (lambda t: config(t), ["--out", "FILE"], ["--out", "is a file", "pass a directory"]),
])
def test_bad_arguments_and_configs(tmp_path, capsys, make, argv_tail, words):
    (tmp_path / "FILE").write_text("not a directory")
    argv = ["run", make(tmp_path)] + [str(tmp_path / "FILE") if a == "FILE" else a for a in argv_tail]
    assert main(argv) == 2
    err = one_line_err(capsys)
    for w in words:
        assert w in err, (w, err)


def test_corrupt_record_and_corrupt_checkpoint_are_set_aside_and_rerun(tmp_path, capsys):
    from bench.runner.cells import expand
    from bench.runner.config import load_config

    cfg = config(tmp_path, seeds=(0, 1))
    a, b = [c["cell_id"] for c in expand(load_config(cfg))]
    out = tmp_path / "out"
    (out / "cells").mkdir(parents=True)
    (out / "cells" / f"{a}.json").write_text('{"schema": "acmix-bench/cell/v1", "cell_id": ')  # cut short
    (out / "ckpt" / b).mkdir(parents=True)
    (out / "ckpt" / b / "last.ckpt").write_bytes(b"PK\x03\x04 not a checkpoint")
    rc, text = run("run", cfg, "--out", str(out), "--no-progress")
    err = capsys.readouterr().err
    assert rc == 0, text + err
    assert f"cells/{a}.json is not a readable record" in text and "its cell runs again" in text
    assert "checkpoint last.ckpt was unreadable" in err and "restarted from scratch" in err
    recs = {r["cell_id"]: r for r in R.read_records(str(out))}
    assert recs[a]["status"] == recs[b]["status"] == "ok"
    assert "restarted from scratch" in recs[b]["resume_note"] and recs[b]["resumed_from"] is None
    aside = [f for f in os.listdir(out / "ckpt" / b)] if (out / "ckpt" / b).exists() else []
    assert aside == [] or all("unreadable" in f for f in aside)


def test_full_disk_is_one_line_and_keeps_finished_records(tmp_path, capsys, monkeypatch):
    from bench.runner.cells import expand
    from bench.runner.config import load_config

    cfg = config(tmp_path, seeds=(0, 1))
    a, b = [c["cell_id"] for c in expand(load_config(cfg))]
    real = R.atomic_write_json
    writes = {}

    def full_disk(path, obj):
        if path.endswith(f"{b}.json"):
            writes[b] = writes.get(b, 0) + 1
            if writes[b] == 2:  # the second cell's final record: the disk is full by then
                raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(path, obj)

    monkeypatch.setattr(R, "atomic_write_json", full_disk)
    out = tmp_path / "out"
    rc, text = run("run", cfg, "--out", str(out), "--no-progress")
    assert rc == 2
    err = one_line_err(capsys)
    assert "No space left on device" in err and f"{b}.json" in err and "records already written are intact" in err
    assert R.read_record(str(out), a)["status"] == "ok"  # the finished cell is intact
    assert R.read_record(str(out), b)["status"] == "running"  # resumable: the rerun picks it up
    assert not [f for f in os.listdir(out / "cells") if f.endswith(".tmp")]
    monkeypatch.setattr(R, "atomic_write_json", real)
    rc, text = run("run", cfg, "--out", str(out), "--no-progress")
    assert rc == 0 and "1 already finished, 1 to run" in text


def test_wrong_dataset_files_fail_the_cell_with_what_is_wrong(tmp_path, capsys):
    root = tmp_path / "fm"
    root.mkdir()
    for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (root / n).write_bytes(b"\x00\x00\x08\x03 these are not images")
    cfg = config(tmp_path, matrix={"backbones": ["resnet26"], "operators": ["conv"], "datasets": ["fashion_mnist"],
                                   "seeds": [0]}, data={"root": str(root)})
    rc, text = run("run", cfg, "--out", str(tmp_path / "out"), "--no-progress")
    assert rc == 1, text
    (rec,) = R.read_records(str(tmp_path / "out"))
    assert rec["status"] == "failed" and "corrupt Fashion-MNIST file" in rec["reason"]
    assert "1 cell(s) not ok" in text and "corrupt Fashion-MNIST file" in text


def test_report_of_a_directory_without_records(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "has no cells/ folder" in one_line_err(capsys)
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "x.json").write_text("{")
    assert main(["report", str(tmp_path)]) == 2
    err = one_line_err(capsys)
    assert "no usable records" in err and "not valid JSON" in err
    json.dumps(err)
