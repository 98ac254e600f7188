"""Command-line output: --version, --format json for `run --dry-run` and `match`, a quiet matrix run (one line
per cell, no Lightning tips or bars unless -v), progress on stderr while matching."""
import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout

import pytest
import yaml

from bench.cli import main, version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = main(list(argv))
        except SystemExit as e:  # argparse's --version exits
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def test_version():
    rc, out, _ = _run("--version")
    assert rc == 0 and out.strip() == f"acmix-bench {version()}"
    import re
    expect = re.search(r'^version = "([^"]+)"', open(os.path.join(ROOT, "pyproject.toml")).read(), re.M).group(1)
    assert version().split()[0] == expect


def _config(tmp_path, **extra):
    p = tmp_path / "c.yaml"
    raw = {"name": "t", "matrix": {"backbones": ["resnet26"], "operators": ["conv", "acmix"], "datasets": ["synthetic"],
                                   "seeds": [0, 1]},
           "model": {"stem": "small", "widths": [8, 8, 8, 8]},
           "trainer": {"accelerator": "cpu", "max_steps": 2, "log_every_n_steps": 1},
           "data": {"batch_size": 8, "train_subset": 16, "val_subset": 8, "test_subset": 8, "image_size": 16},
           "measure": {"voices": ["formula"], "speed": False, "threads": 1}, "report": False, **extra}
    p.write_text(yaml.safe_dump(raw))
    return str(p)


def test_dry_run_json(tmp_path):
    cfg = _config(tmp_path)
    rc, out, _ = _run("run", cfg, "--dry-run", "--format", "json")
    assert rc == 0
    doc = json.loads(out)
    rc, csv, _ = _run("run", cfg, "--dry-run", "--format", "csv")
    import pandas as pd
    assert doc["config"] == "t" and [c["cell_id"] for c in doc["cells"]] == list(pd.read_csv(io.StringIO(csv)).cell_id)
    assert len(doc["cells"]) == 4 and {c["op"] for c in doc["cells"]} == {"conv", "acmix"}
    rc, out, _ = _run("run", cfg, "--dry-run", "--format", "json", "--shard", "1/2")
    assert len(json.loads(out)["cells"]) == 2 and json.loads(out)["shard"] == "1/2"


def test_match_json_and_progress():
    rc, out, err = _run("match", "--reference", "resnet26-conv", "--variants", "resnet26-sa,resnet26-acmix",
                        "--size", "32", "--stem", "small", "--tol", "0.05", "--format", "json", "--threads", "1")
    assert rc == 0, err
    rows = json.loads(out)
    assert [r["model"] for r in rows] == ["resnet26-sa", "resnet26-acmix"]
    for r in rows:
        assert abs(r["macs"] - r["target_macs"]) <= 0.05 * r["target_macs"] and r["rel_error"] == pytest.approx(
            (r["macs"] - r["target_macs"]) / r["target_macs"])
        assert len(r["widths"]) == 4
    assert rows[0]["target_macs"] == rows[1]["target_macs"]
    assert "counting the reference resnet26-conv" in err and "[2/2] searching widths for resnet26-acmix" in err


def test_quiet_matrix_run_has_no_lightning_tips(tmp_path, capfd):
    cfg = _config(tmp_path, matrix={"backbones": ["resnet26"], "operators": ["conv"], "datasets": ["synthetic"],
                                    "seeds": [0, 1]})
    rc = main(["run", cfg, "--out", str(tmp_path / "out")])
    out, err = capfd.readouterr()
    text = out + err
    assert rc == 0, text
    assert "Tip" not in text and "GPU available" not in text and "LOCAL_RANK" not in text, text
    assert text.count("ok          resnet26-conv-synthetic-s") == 2  # the one line per cell
    assert "Epoch 0" not in text  # no Lightning bar without -v
    rc = main(["run", cfg, "--out", str(tmp_path / "out2"), "-v", "--no-progress"])
    out, err = capfd.readouterr()
    assert rc == 0 and ("Epoch 0" in out + err or "GPU available" in out + err)
