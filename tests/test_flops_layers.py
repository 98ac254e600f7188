"""Per-module counts (`acmix-bench flops --per-layer`, bench/flops/layers.py): tree rows, depth
folding, sums consistent with count_model per stage for every voice, CSV columns, errors."""
from __future__ import annotations

import csv
import io
import subprocess
import sys

import pytest

from bench.flops import PER_LAYER_VOICES, format_layers_csv, format_layers_table, layer_counts
from bench.flops.layers import COLUMNS

SIZE = 32


def _resnet():
    from modules import create_model
    return create_model("resnet26-acmix", stem="small", img_size=SIZE, widths=[8, 8, 16, 16])


def _swin():
    from modules import create_model
    return create_model("swin_micro-acmix", stem="small", img_size=SIZE)


def _check_sums(lc):
    """Every row = its own + its children (checked at full depth through the row order)."""
    rows = {r["module"]: r for r in lc.rows}
    for name, r in rows.items():
        kids = [c for n, c in rows.items() if n and (n.rsplit(".", 1)[0] if "." in n else "") == name]
        assert r["macs"] == r["stage1"] + r["stage2"] + r["other"]
        for col in ("params", "macs", "stage1", "stage2", "other"):
            assert r[col] >= sum(c[col] for c in kids), (name, col)


@pytest.mark.parametrize("make,voices", [(_resnet, PER_LAYER_VOICES), (_swin, ("formula", "fvcore", "torch"))],
                         ids=["resnet26-acmix", "swin_micro-acmix"])
def test_root_equals_count_model_per_stage_every_voice(make, voices):
    model = make()
    for voice in voices:
        lc = layer_counts(model, input_size=(3, SIZE, SIZE), voice=voice, depth=99)
        # the per-stage rows of the same count_model run (the CLI test checks a separate run)
        ref = lc.result
        root = lc.rows[0]
        assert root["module"] == "" and root["depth"] == 0
        assert root["macs"] == ref.total(voice) > 0, voice
        assert root["params"] == ref.get("total", voice, "params"), voice
        assert root["stage1"] == ref.get("stage1", voice), voice
        assert root["stage2"] == ref.get("stage2", voice), voice
        assert root["other"] == ref.get("other", voice), voice
        assert len(lc.rows) == len(list(model.named_modules()))
        _check_sums(lc)
    # formula: the ACmix operators carry the Stage I and Stage II MACs
    lc = layer_counts(model, input_size=(3, SIZE, SIZE), voice="formula", depth=99)
    assert lc.rows[0]["stage1"] > 0 and lc.rows[0]["stage2"] > 0


def test_parent_is_own_plus_children_exactly():
    model = _resnet()
    lc = layer_counts(model, input_size=(3, SIZE, SIZE), voice="formula", depth=99)
    rows = {r["module"]: r for r in lc.rows}
    # a Bottleneck owns no ops itself except the residual add and relu calls made in its forward
    blk = rows["layer1.0"]
    kids = [r for n, r in rows.items() if n.startswith("layer1.0.") and n.count(".") == 2]
    own = blk["macs"] - sum(r["macs"] for r in kids)
    assert own >= 0
    # the model's own params: none (all owned by submodules), so the root params = sum of top-level rows
    top = [r for r in lc.rows if r["depth"] == 1]
    assert lc.rows[0]["params"] == sum(r["params"] for r in top)


def test_depth_folding_keeps_totals():
    model = _resnet()
    full = layer_counts(model, input_size=(3, SIZE, SIZE), voice="formula", depth=99)
    for depth in (0, 1, 2):
        lc = layer_counts(model, input_size=(3, SIZE, SIZE), voice="formula", depth=depth)
        assert max(r["depth"] for r in lc.rows) == depth
        assert [r["module"] for r in lc.rows] == [r["module"] for r in full.rows if r["depth"] <= depth]
        by_name = {r["module"]: r for r in full.rows}
        for r in lc.rows:  # a folded row still holds everything below it
            assert r == by_name[r["module"]]
        # the folded leaves plus what the shallower rows run themselves make up the model total
        def own(r):
            pre = r["module"] + "." if r["module"] else ""
            return r["macs"] - sum(c["macs"] for c in full.rows
                                   if c["module"].startswith(pre) and c["depth"] == r["depth"] + 1)
        leaves = sum(r["macs"] for r in lc.rows if r["depth"] == depth)
        assert leaves + sum(own(r) for r in lc.rows if r["depth"] < depth) == full.rows[0]["macs"]
    assert len(layer_counts(model, input_size=(3, SIZE, SIZE), depth=0).rows) == 1


def test_table_indentation_and_csv_columns():
    model = _resnet()
    lc = layer_counts(model, input_size=(3, SIZE, SIZE), voice="formula", depth=3)
    table = format_layers_table(lc).splitlines()
    head = next(i for i, line in enumerate(table) if line.startswith("module"))
    body = table[head + 2:head + 2 + len(lc.rows)]
    assert len(body) == len(lc.rows)
    assert body[0].startswith("model ")
    for line, r in zip(body, lc.rows):
        indent = len(line) - len(line.lstrip(" "))
        assert indent == 2 * r["depth"]
        name = r["module"].rsplit(".", 1)[-1] if r["module"] else "model"
        assert line.lstrip(" ").startswith(name + " ")
        assert f"{r['macs']:,}" in line
    assert "Stage I" in table[head] and "Stage II" in table[head]
    rows = list(csv.DictReader(io.StringIO(format_layers_csv(lc))))
    assert tuple(rows[0].keys()) == COLUMNS
    assert [r["module"] for r in rows] == [r["module"] for r in lc.rows]
    assert int(rows[0]["macs"]) == lc.rows[0]["macs"]
    assert list(csv.DictReader(io.StringIO(format_layers_csv(lc, flops=True))))[0]["flops"] == str(
        2 * lc.rows[0]["macs"])


def test_bad_input_is_a_value_error():
    model = _resnet()
    with pytest.raises(ValueError, match="one voice"):
        layer_counts(model, input_size=(3, SIZE, SIZE), voice="formula,fvcore")
    with pytest.raises(ValueError, match="backward counted"):
        layer_counts(model, input_size=(3, SIZE, SIZE), voice="torch", backward="counted")
    with pytest.raises(ValueError, match="depth"):
        layer_counts(model, input_size=(3, SIZE, SIZE), depth=-1)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "bench.cli", "flops", *args], capture_output=True, text=True,
                          timeout=300)


def _cli_here(capsys, *args):
    """`acmix-bench flops ARGS` in this process (bench.cli.main, as the console script calls it): (exit code,
    stdout, stderr). One start-up of torch less per call than _cli; the exit path itself is checked by _cli."""
    import torch

    from bench.cli import main

    capsys.readouterr()
    threads = torch.get_num_threads()  # `flops` sets its --threads for the process
    try:
        rc = main(["flops", *args])
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_per_layer_rows_match_normal_output_and_errors(capsys):
    args = ["--model", "resnet26-acmix", "--size", "32", "--stem", "small"]
    rc, out, err = _cli_here(capsys, *args, "--per-layer", "--depth", "1", "--voice", "torch", "--format", "csv")
    assert rc == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows[0]["module"] == "" and len(rows) == 1 + sum(1 for r in rows if r["depth"] == "1")
    assert all(int(r["depth"]) <= 1 for r in rows)
    rc, out, err = _cli_here(capsys, *args, "--voices", "torch", "--format", "csv")
    assert rc == 0, err
    total = next(r for r in csv.DictReader(io.StringIO(out)) if r["stage"] == "total")
    assert rows[0]["macs"] == total["macs"] and rows[0]["params"] == total["params"]
    # a voice that cannot attribute per module (backward ops run outside every module): one line, exit 2
    rc, out, err = _cli_here(capsys, *args, "--per-layer", "--voice", "torch", "--backward", "counted")
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    # the same through the console entry point in its own process: exit status 2, one line, no traceback
    e = _cli(*args, "--per-layer", "--voice", "nosuch")
    assert e.returncode == 2 and len(e.stderr.strip().splitlines()) == 1 and "nosuch" in e.stderr
