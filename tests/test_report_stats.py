"""The report's statistics: t quantiles, paired and Welch intervals, verdicts, seeds to decide, claims.json,
the headline at the top of the report, and the equivalence margin from config and command line.

Hand-computed values are written out in the comments; records are the SYNTHETIC fixtures
(tests/fixtures/records/make_records.py), never measurements.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path

import pytest

from bench.cli import main as cli_main
from reports import stats
from reports.build import build_report
from reports.claims import HELD, NOT_HELD, UNDECIDED, check_claims, compare_acc, speed_sample
from reports.records import records_frame

FIX = Path(__file__).parent / "fixtures" / "records"
_spec = importlib.util.spec_from_file_location("make_records", FIX / "make_records.py")
mk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mk)


# ---------------------------------------------------------------------------- Student t

# t(0.975, df) from published tables (10 significant digits)
T975 = {1: 12.70620474, 2: 4.302652730, 3: 3.182446305, 4: 2.776445105, 5: 2.570581836, 9: 2.262157163,
        10: 2.228138852, 30: 2.042272456, 120: 1.979930405, math.inf: 1.959963985}


@pytest.mark.parametrize("df", list(T975))
def test_t_quantile_matches_tables(df):
    assert stats.t_ppf(0.975, df) == pytest.approx(T975[df], rel=1e-9)
    assert stats.t_crit(df) == pytest.approx(T975[df], rel=1e-9)


def test_t_quantile_other_levels_and_symmetry():
    assert stats.t_ppf(0.995, 5) == pytest.approx(4.032142984, rel=1e-9)
    assert stats.t_ppf(0.95, 10) == pytest.approx(1.812461123, rel=1e-9)
    assert stats.t_ppf(0.9, 7) == pytest.approx(1.414923928, rel=1e-9)
    assert stats.t_ppf(0.025, 4) == pytest.approx(-T975[4], rel=1e-9)
    assert stats.t_ppf(0.5, 3) == 0.0
    assert stats.t_cdf(0.0, 7) == pytest.approx(0.5, abs=1e-15)
    # df = 1 is the Cauchy law: F(t) = 1/2 + atan(t)/pi; df = 2 has F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    for t in (-3.0, -0.4, 0.7, 5.0):
        assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-13)
        assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-13)
    with pytest.raises(ValueError):
        stats.t_ppf(1.0, 3)
    with pytest.raises(ValueError):
        stats.t_cdf(1.0, 0)


@pytest.mark.parametrize("df", [2.5, 3.2347, 7.9])
def test_t_cdf_non_integer_df_against_integrated_density(df):
    """Welch's df is fractional: check the cdf against Simpson's rule on the density, written independently."""
    def pdf(x):
        c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
        return c * (1 + x * x / df) ** (-(df + 1) / 2)

    q = stats.t_ppf(0.975, df)
    n = 20_000
    h = q / n
    area = pdf(0) + pdf(q) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, n))
    assert 0.5 + area * h / 3 == pytest.approx(0.975, abs=1e-9)


# ---------------------------------------------------------------------------- intervals

def test_paired_interval_by_hand():
    # d = [0.2, 0.4, 0.3]: mean 0.3, sd 0.1, SE 0.1/sqrt(3) = 0.0577350; t(0.975, 2) = 4.3026527
    # half-width 0.2484138 -> CI [0.0515862, 0.5484138]
    iv = stats.paired_ci([1.2, 1.4, 1.3], [1.0, 1.0, 1.0])
    assert iv.paired and iv.n_a == iv.n_b == 3 and iv.df == 2
    assert iv.diff == pytest.approx(0.3)
    assert iv.spread == pytest.approx(0.1)
    assert iv.se == pytest.approx(0.0577350269, rel=1e-8)
    assert iv.half_width == pytest.approx(0.2484138, rel=1e-6)
    assert (iv.low, iv.high) == (pytest.approx(0.0515862, abs=1e-6), pytest.approx(0.5484138, abs=1e-6))
    assert stats.verdict(iv.low, iv.high, 0.5) == stats.BETTER
    with pytest.raises(ValueError):
        stats.paired_ci([1.0, 2.0], [1.0])
    one = stats.paired_ci([1.0], [0.5])
    assert one.diff == 0.5 and math.isnan(one.low) and math.isnan(one.high)


def test_welch_interval_by_hand():
    # a = [1, 2, 3, 4]: mean 2.5, var 5/3; b = [2, 4, 6]: mean 4, var 4
    # SE^2 = (5/3)/4 + 4/3 = 1.75; nu = 1.75^2 / ((5/12)^2/3 + (4/3)^2/2) = 3.0625 / 0.9467593 = 3.2347
    iv = stats.welch_ci([1, 2, 3, 4], [2, 4, 6])
    assert not iv.paired and (iv.n_a, iv.n_b) == (4, 3)
    assert iv.diff == pytest.approx(-1.5)
    assert iv.se == pytest.approx(math.sqrt(1.75))
    assert iv.df == pytest.approx(3.0625 / (25 / 144 / 3 + 16 / 9 / 2), rel=1e-12)
    assert iv.df == pytest.approx(3.2347, abs=1e-4)
    h = stats.t_ppf(0.975, iv.df) * math.sqrt(1.75)
    assert (iv.low, iv.high) == (pytest.approx(-1.5 - h), pytest.approx(-1.5 + h))
    assert 3.182446305 > stats.t_ppf(0.975, iv.df) > 2.776445105  # between t(3) and t(4)
    assert stats.verdict(iv.low, iv.high, 0.5) == stats.UNDECIDED
    assert math.isnan(stats.welch_ci([1.0], [1.0, 2.0]).low)  # one value on a side: no interval


def test_mean_ci_by_hand():
    # [1, 2, 3]: mean 2, sd 1, half-width 4.3026527 / sqrt(3) = 2.4841377
    m, lo, hi = stats.mean_ci([1, 2, 3])
    assert m == 2 and lo == pytest.approx(2 - 2.4841377, abs=1e-6) and hi == pytest.approx(2 + 2.4841377, abs=1e-6)
    m, lo, hi = stats.mean_ci([5.0])
    assert m == 5.0 and math.isnan(lo) and math.isnan(hi)


# ---------------------------------------------------------------------------- verdicts

@pytest.mark.parametrize("low,high,margin,want", [
    (0.2, 1.4, 0.5, "better"),        # CI above 0
    (-1.4, -0.2, 0.5, "worse"),       # CI below 0
    (-0.3, 0.4, 0.5, "equivalent"),   # inside +-margin, includes 0
    (-0.3, 0.8, 0.5, "undecided"),    # includes 0, reaches beyond the margin
    (-0.6, 0.4, 0.5, "undecided"),
    (-0.5, 0.4, 0.5, "undecided"),    # touching the margin is not inside it
    (0.1, 0.3, 0.5, "better"),        # excludes 0 and inside the margin: better takes precedence
    (-0.3, -0.1, 0.5, "worse"),
    (float("nan"), float("nan"), 0.5, "undecided"),
])
def test_verdict_branches(low, high, margin, want):
    assert stats.verdict(low, high, margin) == want


def test_seeds_to_decide_by_hand():
    # paired, d = 0.3, s_d = 0.5, m = 0.5: distance needed max(0.3, 0.2) = 0.3 (exclude 0)
    # n = 13: t(12) 0.5/sqrt(13) = 2.17881 * 0.138675 = 0.30215 (not yet); n = 14: 2.16037 * 0.133631 = 0.28869
    assert stats.seeds_to_decide(0.3, 0.5, 0.5) == 14
    assert stats.t_crit(12) * 0.5 / math.sqrt(13) > 0.3 > stats.t_crit(13) * 0.5 / math.sqrt(14)
    # d = 0.05, s = 0.2, m = 0.5: distance max(0.05, 0.45) = 0.45 (inside the margin)
    # n = 3: 4.30265 * 0.2 / 1.73205 = 0.4968 (not yet); n = 4: 3.18245 * 0.2 / 2 = 0.3182
    assert stats.seeds_to_decide(0.05, 0.2, 0.5) == 4
    # Welch with equal variances: nu = 2n - 2; s = sqrt(s_a^2 + s_b^2)
    n = stats.seeds_to_decide(0.3, 0.5, 0.5, paired=False, ratio=1.0)
    assert stats.t_crit(2 * n - 2) * 0.5 / math.sqrt(n) < 0.3 <= stats.t_crit(2 * n - 4) * 0.5 / math.sqrt(n - 1)
    assert n < 14  # more degrees of freedom than paired at the same n
    assert stats.seeds_to_decide(0.3, float("nan"), 0.5) is None
    assert stats.seeds_to_decide(0.0, 1.0, 0.0) is None  # nothing to reach
    assert stats.seeds_to_decide(0.001, 100.0, 0.002, max_n=50) is None


def test_speed_sample_pools_repeats_by_hand():
    import pandas as pd

    iqr = 10 * 1.3489795003921634  # sd 10 under the normal law
    one = pd.DataFrame({"k": [100.0], "k_iqr": [iqr], "k_n": [5.0]})
    assert speed_sample(one, "k") == (pytest.approx(100.0), pytest.approx(10.0), 5)
    two = pd.DataFrame({"k": [100.0, 110.0], "k_iqr": [iqr, iqr], "k_n": [5.0, 5.0]})
    # centre 105; SS = 4*100 + 4*100 (within) + 5*25 + 5*25 (between) = 1050; var = 1050 / 9
    c, sd, n = speed_sample(two, "k")
    assert (c, n) == (pytest.approx(105.0), 10) and sd == pytest.approx(math.sqrt(1050 / 9))


# ---------------------------------------------------------------------------- comparisons in the claims

def test_pairing_needs_same_seeds_and_data_settings():
    recs = mk.full_records()
    f = records_frame(recs)
    cfgs = dict(zip(f["op"] + "/" + f["shift"].fillna(""), f["config"]))
    a, b = cfgs["acmix/multigroup"], cfgs["conv/"]
    c = compare_acc(f, a, b)
    assert c["paired"] and c["test"] == "paired t (by seed)" and c["n_a"] == c["n_b"] == 3
    va = f[f["config"] == a].sort_values("seed")["top1"].tolist()
    vb = f[f["config"] == b].sort_values("seed")["top1"].tolist()
    iv = stats.paired_ci(va, vb)
    assert (c["diff"], c["ci_low"], c["ci_high"]) == (pytest.approx(iv.diff), pytest.approx(iv.low),
                                                      pytest.approx(iv.high))
    # other data settings on one side (a different training subset): no shared data order, Welch
    other = copy.deepcopy(recs)
    for r in other:
        if r["cell"]["op"] == "conv":
            r["config"]["data"]["train_subset"] = 4000
    c2 = compare_acc(records_frame(other), a, b)
    assert not c2["paired"] and c2["test"] == "Welch t"
    iv = stats.welch_ci(va, vb)
    assert (c2["ci_low"], c2["ci_high"]) == (pytest.approx(iv.low), pytest.approx(iv.high))
    # a seed missing on one side: Welch over what there is
    fewer = [r for r in recs if not (r["cell"]["op"] == "conv" and r["cell"]["seed"] == 2)]
    c3 = compare_acc(records_frame(fewer), a, b)
    assert not c3["paired"] and (c3["n_a"], c3["n_b"]) == (3, 2)


def test_equivalent_acmix_does_not_beat_conv_and_undecided_says_how_many_seeds():
    recs = mk.full_records()
    for r in recs:  # ACmix multigroup given conv's accuracy per seed, plus a few hundredths: equivalent
        if r["cell"]["shift"] == "multigroup":
            conv = next(x for x in recs if x["cell"]["op"] == "conv" and x["cell"]["seed"] == r["cell"]["seed"])
            r["metrics"]["top1"] = conv["metrics"]["top1"] + [0.0003, -0.0002, 0.0001][r["cell"]["seed"]]
    c = {x.key: x for x in check_claims(records_frame(recs), recs)}
    rows = [r for r in c["acmix_vs_single_path"].rows if r["deciding"] and "conv" in r["baseline"]]
    assert [r["verdict"] for r in rows] == ["equivalent"]
    assert -0.5 < rows[0]["ci_low"] <= 0 <= rows[0]["ci_high"] < 0.5
    assert c["acmix_vs_single_path"].status == NOT_HELD  # no gain beyond the margin
    assert "equivalent" in c["acmix_vs_single_path"].summary and "95% CI [" in c["acmix_vs_single_path"].summary
    # wider scatter of the 'learnable' seeds: the shift claim becomes undecided, with a seed count to decide it
    noisy = mk.full_records()
    for r in noisy:
        if r["cell"]["shift"] == "learnable":
            r["metrics"]["top1"] += [0.012, -0.013, 0.0][r["cell"]["seed"]]
    c = {x.key: x for x in check_claims(records_frame(noisy), noisy)}["learnable_multigroup"]
    und = [r for r in c.rows if r["verdict"] == UNDECIDED]
    assert c.status == UNDECIDED and und
    for r in und:
        n = r["seeds_to_decide"]
        assert isinstance(n, int) and n > 3
        need = max(abs(r["diff"]), r["margin"] - abs(r["diff"]))
        s = r["half_width"] / stats.t_crit(2) * math.sqrt(3)  # the paired differences' sd
        assert stats.t_crit(n - 1) * s / math.sqrt(n) < need <= stats.t_crit(n - 2) * s / math.sqrt(n - 1)
        assert f"about {n} seeds per side would decide" in c.summary


def test_a_larger_margin_turns_undecided_into_equivalent():
    recs = mk.full_records()
    for r in recs:  # multigroup and learnable equal in truth; seeds scatter by the fixture's 0.1 points
        if r["cell"]["shift"] == "multigroup":
            r["metrics"]["top1"] += (mk.TOP1[("acmix", "learnable")] - mk.TOP1[("acmix", "multigroup")]) / 100
    f = records_frame(recs)
    step = lambda m: next(r for r in check_claims(f, recs, m)[2].rows if r["step"] == "multiple groups")  # noqa: E731
    small, large = step(0.05), step(5.0)
    assert (small["ci_low"], small["ci_high"]) == (large["ci_low"], large["ci_high"])
    assert small["ci_low"] < 0 < small["ci_high"]
    assert small["verdict"] == UNDECIDED and large["verdict"] == "equivalent"
    assert large["margin"] == 5.0


# ---------------------------------------------------------------------------- report outputs

@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("stats_report")
    written, rep = build_report(FIX / "full", out)
    return out, written, rep


def test_claims_json_keys_and_values(report):
    out, written, rep = report
    doc = json.loads((out / "claims.json").read_text())  # strict JSON: NaN would not parse in other readers
    assert "NaN" not in (out / "claims.json").read_text()
    assert doc["margin"] == 0.5 and doc["level"] == 0.95
    need = {"claim", "metric", "a", "b", "n_a", "n_b", "diff", "ci_low", "ci_high", "verdict", "paired", "margin",
            "seeds_to_decide"}
    assert doc["comparisons"] and all(need <= set(c) for c in doc["comparisons"])
    assert {c["verdict"] for c in doc["comparisons"]} <= set(stats.VERDICTS)
    assert {c["claim"] for c in doc["comparisons"]} == {"acmix_vs_single_path", "gconv_faster", "learnable_multigroup"}
    assert [(c["claim"], c["status"]) for c in doc["claims"]] == [(c.key, c.status) for c in rep.claims]
    assert all(c["status"] == HELD for c in doc["claims"])
    for c in doc["comparisons"]:
        assert c["ci_low"] <= c["diff"] <= c["ci_high"]
        if c["metric"] == "top1":
            assert c["paired"] is True and c["n_a"] == c["n_b"] == 3
    assert written["claims.json"] == out / "claims.json"


def test_report_opens_with_the_answer(report):
    out, _, rep = report
    md = (out / "report.md").read_text()
    first_h2 = md.split("\n## ", 1)[1].split("\n", 1)[0]
    assert first_h2 == "The answer"
    top = md.split("\n## ", 2)[1]  # the answer section, up to the next heading
    header = next(line for line in top.splitlines() if line.startswith("| "))
    for col in ("model", "top-1 % (mean [95% CI], n)", "MACs", "params", "train samples/s", "infer samples/s"):
        assert f"| {col} |" in header or header.startswith(f"| {col} ")
    assert top.count("| resnet26-") == 6  # one row per configuration
    claim_lines = [line for line in top.splitlines() if line.startswith("- ")]
    assert len(claim_lines) == 4 and all(line.startswith("- HELD: ") for line in claim_lines)
    assert "[+" in claim_lines[0] and "better" in claim_lines[0]  # the interval is in the line
    assert md.index("## The answer") < md.index("## Methods and environment") < md.index("## What is missing")
    html = (out / "report.html").read_text()
    assert html.index("<h2>The answer</h2>") < html.index("<table>") < html.index("<h2>Methods and environment</h2>")
    assert "top-1 % (mean [95% CI], n)" in html.split("<h2>Methods and environment</h2>")[0]


def test_headline_ci_from_records(report):
    """The headline's top-1 interval is the t interval of the seeds' values, recomputed from the JSON records."""
    out, _, _ = report
    raw = [json.loads(f.read_text()) for f in (FIX / "full" / "cells").glob("*.json")]
    conv = [100 * r["metrics"]["top1"] for r in raw if r["cell"]["op"] == "conv"]
    m, lo, hi = stats.mean_ci(conv)
    md = (out / "report.md").read_text()
    assert f"| resnet26-conv | {m:.2f} [{lo:.2f}, {hi:.2f}] (n=3) |" in md


def test_margin_from_plan_config_and_command_line(tmp_path, capsys):
    recs = mk.full_records()
    mk.write_set(tmp_path / "res", recs)
    (tmp_path / "res" / "plan.json").write_text(json.dumps({"cells": [r["cell_id"] for r in recs],
                                                            "report": {"run": True, "margin": 0.8}}))
    assert cli_main(["report", str(tmp_path / "res"), "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "claims.json").read_text())["margin"] == 0.8
    assert "equivalence margin 0.8 top-1 points" in capsys.readouterr().out
    assert cli_main(["report", str(tmp_path / "res"), "--out", str(tmp_path / "b"), "--margin", "0.25"]) == 0
    doc = json.loads((tmp_path / "b" / "claims.json").read_text())
    assert doc["margin"] == 0.25
    assert all(c["margin"] == 0.25 for c in doc["comparisons"] if c["metric"] == "top1")
    assert "equivalence margin m = 0.25 top-1 points" in (tmp_path / "b" / "report.md").read_text()
    cfg = tmp_path / "m.yaml"
    cfg.write_text("matrix: {datasets: [fashion_mnist], backbones: [resnet26], operators: [conv]}\n"
                   "report: {margin: 1.5}\n")
    assert cli_main(["report", str(tmp_path / "res"), "--out", str(tmp_path / "c"), "--matrix", str(cfg)]) == 0
    assert json.loads((tmp_path / "c" / "claims.json").read_text())["margin"] == 1.5
    capsys.readouterr()
    assert cli_main(["report", str(tmp_path / "res"), "--out", str(tmp_path / "d"), "--margin", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "margin -1.0 is not a number > 0" in err


def test_run_config_accepts_report_margin():
    from bench.runner.config import validate_config

    base = {"matrix": {"backbones": ["resnet26"], "operators": ["conv"], "datasets": ["fashion_mnist"]}}
    assert validate_config(dict(base))["report"] == {"run": True, "margin": 0.5}
    assert validate_config(dict(base, report=False))["report"] == {"run": False, "margin": 0.5}
    assert validate_config(dict(base, report={"margin": 0.3}))["report"] == {"run": True, "margin": 0.3}
    assert validate_config(dict(base, report={"margin": 1, "run": False}))["report"] == {"run": False, "margin": 1.0}
    for bad, msg in (({"margin": -0.1}, "report.margin"), ({"margin": "big"}, "report.margin"),
                     ({"marging": 0.3}, "report.marging"), ("yes", "'report'")):
        with pytest.raises(ValueError, match=msg):
            validate_config(dict(base, report=bad))


def test_compare_configs_give_the_interval():
    """--compare: per configuration, the top-1 delta's Welch interval (separate runs); 'changed' when it excludes 0."""
    from reports.compare import config_deltas

    this, base = mk.full_records(), mk.full_records()
    for r in base:
        if r["cell"]["op"] == "conv":
            r["metrics"]["top1"] -= 0.015
    cc = config_deltas(records_frame(this), records_frame(base))
    conv = cc[cc["label"] == "resnet26-conv"].iloc[0]
    a = [100 * r["metrics"]["top1"] for r in this if r["cell"]["op"] == "conv"]
    b = [100 * r["metrics"]["top1"] for r in base if r["cell"]["op"] == "conv"]
    iv = stats.welch_ci(a, b)
    assert (conv["top1_ci_low"], conv["top1_ci_high"]) == (pytest.approx(iv.low), pytest.approx(iv.high))
    assert conv["top1_flag"] == "changed" and iv.low > 0
    same = cc[cc["label"] != "resnet26-conv"]
    assert (same["top1_flag"] == "within noise").all() and (same["top1_ci_low"] < 0).all()
