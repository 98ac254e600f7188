"""`acmix-bench speed`: output shape of the table/CSV, baselines, ratios, memory measure, errors.

Timings are not asserted (the speed targets are checked by the benchmark's table); only
that every case is measured, the baselines are present and the numbers are consistent.
"""
from __future__ import annotations

import csv
import io

import pytest
import torch

from bench import speed
from bench.cli import main

FAST = ["--min-run-time", "0.01", "--repeats", "2"]


def _csv(capsys, argv):
    assert main(["speed", *argv, "--format", "csv", *FAST]) == 0
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))


def test_csv_columns_rows_and_ratios(capsys):
    rows = _csv(capsys, ["--op", "acmix", "--shape", "2,8,9,10", "--kernel-att", "3", "--heads", "2", "--no-memory"])
    header = list(rows[0].keys())
    assert header[:6] == ["op", "impl", "pass", "median_ms", "iqr_ms", "peak_mem_mb"]
    got = {(r["op"], r["impl"], r["pass"]) for r in rows}
    assert got == {(op, impl, p) for p in ("fwd", "fwd+bwd")
                   for op, impl in (("conv3x3", "nn.Conv2d"), ("acmix", "fast"), ("acmix", "reference"))}
    for r in rows:
        assert float(r["median_ms"]) > 0 and float(r["iqr_ms"]) >= 0 and int(r["runs"]) >= 2
        assert r["threads"] == "2" and r["torch"] == torch.__version__
        conv = next(c for c in rows if c["impl"] == "nn.Conv2d" and c["pass"] == r["pass"])
        expect = float(r["median_ms"]) / float(conv["median_ms"])  # CSV values are rounded to 4 decimals
        assert float(r["x_conv"]) == pytest.approx(expect, rel=0.02, abs=2e-4)
    ref = [r for r in rows if r["impl"] == "reference"]
    assert all(abs(float(r["speedup_vs_ref"]) - 1) < 1e-9 for r in ref)
    fast = [r for r in rows if r["impl"] == "fast"]
    assert all(r["backend"] in ("cpp", "torch") for r in fast)
    for r in fast:  # the fast rows' ratio: reference time over fast time, same op and pass
        base = next(c for c in ref if c["op"] == r["op"] and c["pass"] == r["pass"])
        expect = float(base["median_ms"]) / float(r["median_ms"])
        assert float(r["speedup_vs_ref"]) == pytest.approx(expect, rel=0.02, abs=2e-4)


def test_two_strides_in_one_run_compare_per_output_pixel(capsys):
    rows = _csv(capsys, ["--op", "acmix", "--shape", "1,8,10,10", "--kernel-att", "3", "--heads", "2", "--no-memory",
                         "--stride", "1,2", "--rounds", "2"])
    assert {r["stride"] for r in rows} == {"1", "2"}
    for r in rows:
        assert r["rounds"] == "2" and int(r["runs"]) >= 2
        # ratios are taken within a stride: conv baseline and reference of the same stride and pass
        conv = next(c for c in rows if c["impl"] == "nn.Conv2d" and c["pass"] == r["pass"] and c["stride"] == r["stride"])
        assert float(r["x_conv"]) == pytest.approx(float(r["median_ms"]) / float(conv["median_ms"]), rel=0.02, abs=2e-4)
        if r["stride"] == "1":
            assert r["x_stride1"] == ""
        else:
            s1 = next(c for c in rows if c["stride"] == "1" and c["pass"] == r["pass"] and c["op"] == r["op"]
                      and c["impl"] == r["impl"])
            expect = float(r["ms_per_mpix"]) / float(s1["ms_per_mpix"])
            assert float(r["x_stride1"]) == pytest.approx(expect, rel=0.02)
            # 10x10 at stride 2 has 25 output pixels per image, at stride 1 100
            assert float(r["ms_per_mpix"]) == pytest.approx(float(r["median_ms"]) / 25e-6, rel=0.02)


def test_interleaved_rounds_pool_runs():
    calls = []
    res = speed.time_interleaved([lambda: calls.append("a"), lambda: calls.append("b")], threads=1,
                                 min_run_time=0.02, repeats=4, rounds=2)
    assert len(res) == 2 and all(r["runs"] >= 4 and r["median_ms"] > 0 for r in res)
    # warm-up a, b, then round 1 (a..., b...) and round 2 (a..., b...)
    runs = [c for i, c in enumerate(calls) if i == 0 or calls[i - 1] != c]
    assert runs == ["a", "b"] * 3


def test_shift_all_compares_four_implementations(capsys):
    rows = _csv(capsys, ["--op", "shift", "--shift", "all", "--shape", "1,8,8,8", "--pass", "fwd", "--no-memory",
                         "--impl", "fast"])
    shifts = {(r["shift"], r["impl"]) for r in rows if r["op"] == "shift"}
    assert shifts == {(s, i) for s in speed.SHIFTS for i in ("fast", "reference")}
    assert sum(r["impl"] == "nn.Conv2d" for r in rows) == 1


def test_table_format_names_machine_threads_and_method(capsys):
    assert main(["speed", "--op", "sa", "--shape", "1,8,9,9", "--kernel-att", "3", "--stride", "2",
                 "--pass", "fwd", "--no-memory", *FAST]) == 0
    out = capsys.readouterr().out
    assert "2 threads" in out and f"torch {torch.__version__}" in out and "torch.utils.benchmark" in out
    assert "nn.Conv2d" in out and "reference" in out


def test_peak_memory_subprocess_sees_the_unfolded_reference():
    """The reference unfolds k_a^2 x C x H x W windows; the fast path must need far less."""
    kw = dict(shape=(2, 16, 24, 24), kernel_att=7)
    ref = speed.peak_memory(speed.Case("sa", "reference", "fwd+bwd", **kw), threads=1)
    fast = speed.peak_memory(speed.Case("sa", "fast", "fwd+bwd", **kw), threads=1)
    assert ref > 5 and fast > 0
    assert fast < ref / 3


@pytest.mark.parametrize("argv,msg", [
    (["--op", "nope"], "unknown --op"),
    (["--shape", "1,2,3"], "--shape must be B,C,H,W"),
    (["--shift", "diagonal"], "--shift: unknown diagonal"),
    (["--pass", "bwd"], "--pass: unknown bwd"),
    (["--dtype", "int8"], "unknown --dtype"),
    (["--stride", "1,x"], "--stride must be positive"),
    (["--rounds", "0"], "--rounds must be positive"),
    (["--op", "acmix", "--shape", "1,8,3,3"], "kernel_att"),
    (["--op", "acmix", "--shape", "1,6,9,9", "--heads", "4"], "divisible"),
])
def test_bad_input_is_one_clear_line(capsys, argv, msg):
    assert main(["speed", *argv, "--no-memory", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_says_so(capsys):
    assert main(["speed", "--device", "cuda", "--no-memory", *FAST]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_run(capsys):
    rows = _csv(capsys, ["--device", "cuda", "--shape", "2,16,14,14"])
    assert all(r["device"] == "cuda" and float(r["peak_mem_mb"]) >= 0 for r in rows)


def test_preset_default_cells_rows(tmp_path, capsys):
    import yaml

    cfg = {"name": "tiny", "matrix": {"backbones": ["resnet26"], "operators": ["conv", "sa", "acmix"],
                                      "shifts": ["multigroup"], "datasets": ["fashion_mnist"], "seeds": [0]},
           "model": {"stem": "small", "widths": [8, 8, 8, 8]}, "data": {"image_size": 8}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["speed", "--preset", "default-cells", "--config", str(path), "--batch", "2", "--rounds", "1",
                 "--format", "csv", *FAST]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    parts = [r["part"] for r in rows]
    # the step, then every bottleneck of ResNet-26 (1, 2, 4, 1 blocks) and its spatial operator alone
    assert parts[0] == "train step" and len(parts) == 1 + 2 * 8
    assert "layer2.0" in parts and "layer2.0.conv2" in parts and "layer4.0.conv2" in parts
    blk = next(r for r in rows if r["part"] == "layer2.0")
    assert blk["conv_shape"] == "32x8x8 s2" and blk["acmix_shape"] == "32x8x8 s2"
    for r in rows:
        assert r["batch"] == "2" and r["threads"] == "2"
        for op in ("sa", "acmix"):
            assert float(r[f"{op}_vs_conv"]) == pytest.approx(float(r["conv_ms"]) / float(r[f"{op}_ms"]), rel=0.02)
    assert main(["speed", "--preset", "default-cells", "--config", str(path), "--batch", "0"]) == 2
