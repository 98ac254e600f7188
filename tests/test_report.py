"""`acmix-bench report`: tables, plots, claims, --compare, and bad result directories.

All inputs are SYNTHETIC fixture records (tests/fixtures/records/make_records.py), built
so that each claim lands in a known state; none of their numbers is a measurement.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import math
import re
import statistics
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main as cli_main
from reports.build import build_report
from reports.claims import HELD, NOT_HELD, UNDECIDED, check_claims
from reports.records import load_results

FIX = Path(__file__).parent / "fixtures" / "records"
_spec = importlib.util.spec_from_file_location("make_records", FIX / "make_records.py")
mk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mk)

PLOTS = ("accuracy_vs_macs", "throughput_vs_macs", "stage_macs", "shifts", "mixing_by_depth")


def _claims(records):
    rs_frame = __import__("reports.records", fromlist=["records_frame"]).records_frame(records)
    return {c.key: c for c in check_claims(rs_frame, records)}


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("full_report")
    rc = cli_main(["report", str(FIX / "full"), "--compare", str(FIX / "slower"), "--out", str(out)])
    assert rc == 0
    return out


def test_fixtures_are_current_and_valid(tmp_path):
    """The committed fixture sets equal what the generator writes, and pass the runner's validator."""
    mk.build_all(tmp_path)
    for name in ("full", "slower", "partial"):
        committed = sorted(p.name for p in (FIX / name / "cells").glob("*.json"))
        fresh = sorted(p.name for p in (tmp_path / name / "cells").glob("*.json"))
        assert committed == fresh, name
        for f in committed:
            assert json.loads((FIX / name / "cells" / f).read_text()) == json.loads((tmp_path / name / "cells" / f).read_text())
    from bench.runner.records import validate_record

    for f in (FIX / "full" / "cells").glob("*.json"):
        validate_record(json.loads(f.read_text()))


def test_report_writes_every_output(full_report):
    for f in ("report.md", "report.html"):
        assert (full_report / f).stat().st_size > 1000
    for t in ("cells", "summary", "stages", "match", "mixing", "shifts", "claims", "compare_cells", "compare_configs"):
        df = pd.read_csv(full_report / "tables" / f"{t}.csv")
        assert len(df) > 0, t
    for p in PLOTS:
        assert (full_report / "plots" / f"{p}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in (full_report / "plots" / f"{p}.svg").read_bytes()[:2000]
    md = (full_report / "report.md").read_text()
    assert "SYNTHETIC TEST FIXTURE" in md  # fixtures are never presented as measurements
    assert "MACs" in md and "FLOPs would be 2 x MACs" in md


def test_html_is_self_contained(full_report):
    html = (full_report / "report.html").read_text()
    srcs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert srcs and all(s.startswith("data:") for s in srcs), [s[:40] for s in srcs if not s.startswith("data:")]
    assert "http://" not in html and "https://" not in html
    assert html.count("<img ") == len(PLOTS)


def test_summary_numbers_from_records(full_report):
    """Mean, std and n in summary.csv recomputed straight from the JSON records."""
    raw = [json.loads(f.read_text()) for f in (FIX / "full" / "cells").glob("*.json")]
    summ = pd.read_csv(full_report / "tables" / "summary.csv")
    conv = [r for r in raw if r["cell"]["op"] == "conv"]
    top1 = [100 * r["metrics"]["top1"] for r in conv]
    row = summ[summ["op"] == "conv"].iloc[0]
    assert row["top1_n"] == 3
    assert row["top1_mean"] == pytest.approx(statistics.mean(top1), abs=1e-9)
    assert row["top1_std"] == pytest.approx(statistics.stdev(top1), abs=1e-9)
    assert row["macs"] == conv[0]["counts"]["voices"]["formula"]["total"]["macs"]
    assert row["infer_samples_per_s"] == pytest.approx(
        statistics.median(r["speed"]["infer_samples_per_s"]["median"] for r in conv))
    stages = pd.read_csv(full_report / "tables" / "stages.csv")
    acm = stages[(stages["label"].str.contains("multigroup")) & (stages["stage"] == "stage2.conv")]
    mg = [r for r in raw if r["cell"]["shift"] == "multigroup"][0]
    assert acm["macs"].iloc[0] == mg["counts"]["voices"]["formula"]["stage2.conv"]["macs"]
    match = pd.read_csv(full_report / "tables" / "match.csv")
    assert set(match["op"]) == {"conv", "sa", "acmix"} and match["within"].all()


def test_claims_held_on_full_fixture():
    rs = load_results(FIX / "full")
    got = {c.key: c.status for c in check_claims(rs.frame, rs.records)}
    assert got == {"acmix_vs_single_path": HELD, "gconv_faster": HELD, "learnable_multigroup": HELD,
                   "mixing_by_depth": HELD}


def test_claims_not_held_when_data_says_otherwise():
    recs = mk.full_records()
    for r in recs:
        if r["cell"]["op"] == "conv":
            r["metrics"]["top1"] += 0.05  # conv now clearly beats ACmix
        if r["cell"]["shift"] == "tensor":
            r["speed"]["infer_samples_per_s"]["median"] *= 2.0  # tensor shifts now faster than group convs
        if r["cell"]["shift"] == "learnable":
            r["metrics"]["top1"] -= 0.02  # learnable kernels hurt
        for d in r["mixing_by_depth"]:  # attention early, convolution late
            d["alpha"], d["beta"] = d["beta"] ** 2 / d["alpha"], d["beta"]
    c = _claims(recs)
    assert c["acmix_vs_single_path"].status == NOT_HELD
    assert c["gconv_faster"].status == NOT_HELD
    assert c["learnable_multigroup"].status == NOT_HELD
    assert c["mixing_by_depth"].status == NOT_HELD
    rows = c["acmix_vs_single_path"].rows
    assert any(r["verdict"] == "worse" and r["diff"] < -2.5 for r in rows)


def test_claims_need_spread_and_cells():
    one_seed = mk.full_records(seeds=(0,))
    c = _claims(one_seed)
    assert c["acmix_vs_single_path"].status == UNDECIDED  # one seed: spread unknown
    assert c["learnable_multigroup"].status == UNDECIDED
    assert all(r["verdict"] == UNDECIDED and r["note"].startswith("no spread") for r in c["acmix_vs_single_path"].rows)
    no_sa = [r for r in mk.full_records() if r["cell"]["op"] != "sa"]
    c = _claims(no_sa)
    assert c["acmix_vs_single_path"].status == UNDECIDED and "no finished sa" in c["acmix_vs_single_path"].summary
    no_tensor = [r for r in mk.full_records() if r["cell"]["shift"] != "tensor"]
    assert _claims(no_tensor)["gconv_faster"].status == UNDECIDED
    no_mix = copy.deepcopy(mk.full_records())
    for r in no_mix:
        r["mixing_by_depth"] = []
    assert _claims(no_mix)["mixing_by_depth"].status == UNDECIDED


def test_speed_within_noise_is_not_held_and_unmatched_flops_cannot_decide():
    recs = mk.full_records()
    for r in recs:
        if r["cell"]["shift"] == "tensor":  # equal to 'fixed' within its 3% IQR
            r["speed"]["infer_samples_per_s"]["median"] = mk.INFER[("acmix", "fixed")] * 1.005
        if r["cell"]["op"] == "sa":  # off the group's budget by 5% (tolerance 1%)
            r["match"]["rel_error"] = 0.05
    c = _claims(recs)
    assert c["gconv_faster"].status == NOT_HELD
    deciding = [r for r in c["gconv_faster"].rows if r["deciding"]]
    assert [r["verdict"] for r in deciding] == ["equivalent"]  # CI inside +-5% of tensor's speed: no gain
    assert c["acmix_vs_single_path"].status == UNDECIDED
    assert any(r["note"].startswith("not matched") for r in c["acmix_vs_single_path"].rows)
    assert all(r["verdict"] == UNDECIDED for r in c["acmix_vs_single_path"].rows if "sa" in r["baseline"])


def test_compare_flags_changes_beyond_noise(full_report):
    cd = pd.read_csv(full_report / "tables" / "compare_cells.csv", keep_default_na=False)
    assert len(cd) == 18
    flagged = cd[cd["flags"] != ""]
    # full vs slower: multigroup cells 25% faster here (slower has them at 0.8x), conv 1.5 points better
    mg = flagged[flagged["cell_id"].str.contains("multigroup")]
    assert len(mg) == 3 and all("infer_samples_per_s" in f for f in mg["flags"])
    conv = flagged[flagged["cell_id"].str.contains("conv-")]
    assert len(conv) == 3 and all("top1" in f for f in conv["flags"])
    assert len(flagged) == 6
    cc = pd.read_csv(full_report / "tables" / "compare_configs.csv")
    assert (cc["top1_flag"] == "changed").sum() == 1
    assert (cc["infer_flag"] == "changed").sum() == 1


def test_compare_with_itself_flags_nothing(tmp_path):
    build_report(FIX / "full", tmp_path, compare=FIX / "full")
    cd = pd.read_csv(tmp_path / "tables" / "compare_cells.csv", keep_default_na=False)
    assert len(cd) == 18 and (cd["flags"] == "").all()
    assert (cd["top1_delta"] == 0).all()


def test_partial_matrix_says_what_is_missing(tmp_path, capsys):
    rc = cli_main(["report", str(FIX / "partial"), "--out", str(tmp_path)])
    assert rc == 0
    md = (tmp_path / "report.md").read_text()
    section = md.split("## What is missing or broken", 1)[1].split("\n## ", 1)[0]
    assert "resnet26-sa-fashion_mnist-s0-1b123b40" in section  # planned, never written
    assert "is failed: RuntimeError: synthetic failure" in section
    assert "is running" in section
    assert "finished seed(s) of" not in section  # every config has 1 seed
    assert "cannot be decided" in section
    assert "1 planned but missing" in capsys.readouterr().out


def test_missing_cells_from_matrix_config(tmp_path):
    """--matrix: planned cells come from the runner's own expansion of a config."""
    from bench.runner.cells import expand
    from bench.runner.config import load_config

    cfg_text = """
matrix:
  datasets: [fashion_mnist]
  seeds: [0, 1]
  backbones: [resnet26]
  operators: [conv, acmix]
  shifts: [multigroup]
  mixings: [learnable]
"""
    cfg_path = tmp_path / "m.yaml"
    cfg_path.write_text(cfg_text)
    cells = expand(load_config(cfg_path, check_registry=False))
    recs = [mk.make_record("resnet26-conv", "conv", None, None, None, 0),
            mk.make_record("resnet26-acmix", "acmix", "multigroup", "learnable", None, 0)]
    mk.write_set(tmp_path / "res", recs)
    from bench.report_cli import plan_from_config

    rs = load_results(tmp_path / "res", planned=plan_from_config(cfg_path))
    assert len(rs.planned) == len(cells) == 4
    assert len(rs.missing()) == 2 and all("-1" in m or "s1" in m for m in rs.missing())


def test_bad_directories_give_one_line_errors(tmp_path, capsys):
    cases = {
        "missing": (tmp_path / "nope", "does not exist"),
        "no_cells": (tmp_path / "empty", "has no cells/ folder"),
        "file": (tmp_path / "afile.txt", "is a file"),
        "only_bad": (tmp_path / "bad", "no usable records"),
        "empty_cells": (tmp_path / "empty_cells", "no usable records"),
    }
    (tmp_path / "empty_cells" / "cells").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile.txt").write_text("x")
    (tmp_path / "bad" / "cells").mkdir(parents=True)
    (tmp_path / "bad" / "cells" / "x.json").write_text('{"schema": "acmix-bench/cell/v1", "cell_id": ')
    for name, (path, msg) in cases.items():
        rc = cli_main(["report", str(path), "--out", str(tmp_path / f"o_{name}")])
        err = capsys.readouterr().err.strip()
        assert rc == 2, name
        assert len(err.splitlines()) == 1 and msg in err and "Traceback" not in err, (name, err)
    rc = cli_main(["report", str(FIX / "full"), "--compare", str(tmp_path / "nope2")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_unreadable_records_are_listed_not_fatal(tmp_path, capsys):
    recs = mk.full_records(seeds=(0,))
    mk.write_set(tmp_path / "res", recs)
    cells = tmp_path / "res" / "cells"
    (cells / "truncated.json").write_text('{"schema": "acmix-bench/cell/v1", "cell_id": "x", "sta')
    bad = copy.deepcopy(recs[0])
    bad["schema"] = "acmix-bench/cell/v0"
    bad["cell_id"] = "old-schema"
    (cells / "old.json").write_text(json.dumps(bad))
    nokey = copy.deepcopy(recs[1])
    nokey["cell_id"] = "no-metrics"
    nokey["metrics"] = None
    (cells / "nometrics.json").write_text(json.dumps(nokey))
    rc = cli_main(["report", str(tmp_path / "res"), "--out", str(tmp_path / "out")])
    assert rc == 0
    err = capsys.readouterr().err
    assert "truncated.json" in err and "old.json" in err and "nometrics.json" in err
    md = (tmp_path / "out" / "report.md").read_text()
    assert "unreadable record truncated.json: not valid JSON" in md
    assert "unreadable record old.json: schema is 'acmix-bench/cell/v0'" in md
    assert "unreadable record nometrics.json" in md


def test_report_of_only_unfinished_cells(tmp_path):
    """A matrix whose cells are all running or failed still reports (nothing to plot, says so)."""
    recs = [mk.make_record("resnet26-conv", "conv", None, None, "budget", 0, status="running"),
            mk.make_record("resnet26-acmix", "acmix", "multigroup", "learnable", "budget", 0, status="failed")]
    mk.write_set(tmp_path / "res", recs)
    written, rep = build_report(tmp_path / "res", tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "No plot 'accuracy_vs_macs'" in md
    assert all(c.status == UNDECIDED for c in rep.claims)
    assert "plots/accuracy_vs_macs.png" not in written


def test_nan_metrics_do_not_crash(tmp_path):
    recs = mk.full_records(seeds=(0, 1))
    recs[0]["metrics"]["top5"] = None
    recs[1]["speed"]["latency_b1_ms"] = None
    recs[2]["counts"] = None
    mk.write_set(tmp_path / "res", recs)
    build_report(tmp_path / "res", tmp_path / "out")
    summ = pd.read_csv(tmp_path / "out" / "tables" / "summary.csv")
    assert len(summ) == 6
    assert not math.isnan(summ["top1_mean"].iloc[0])


def test_labels_name_what_varies():
    """Labels show shift/mixing and only the overrides that differ; two configurations never share a label."""
    from reports.records import label_map

    a = mk.make_record("resnet26-acmix", "acmix", "multigroup", "learnable", None, 0)
    b = copy.deepcopy(a)
    b["cell"]["overrides"]["kernel_att"] = 5
    c = copy.deepcopy(a)
    c["cell"]["group"] = "budget"
    labels = label_map([a, b, c])
    assert len(set(labels.values())) == 3
    assert any("kernel_att=5" in v for v in labels.values())
    assert not any("stem=" in v for v in labels.values())  # same for all: not shown
    assert any(v.endswith("group=budget") for v in labels.values())


def test_group_reference_outside_the_group_counts():
    """A group's reference cell (named by the members' match.reference_cell) is compared even when its own
    cell.group is empty, as when the members selector does not cover the reference."""
    recs = mk.full_records()
    conv_ids = {}
    for r in recs:
        if r["cell"]["op"] == "conv":
            r["cell"]["group"] = None
            r["match"] = None
            conv_ids[r["cell"]["seed"]] = r["cell_id"]
    for r in recs:
        if r["match"]:
            r["match"]["reference_cell"] = conv_ids[r["cell"]["seed"]]
    c = _claims(recs)["acmix_vs_single_path"]
    assert c.status == HELD
    assert {r["baseline"] for r in c.rows} == {"resnet26-conv", "resnet26-sa"}


def test_speed_on_different_machines_is_not_compared():
    recs = mk.full_records()
    for r in recs:
        if r["cell"]["shift"] == "tensor":
            r["speed"]["threads"] = 8
    c = _claims(recs)["gconv_faster"]
    assert c.status == UNDECIDED
    assert all(r["verdict"] == UNDECIDED and r["note"].startswith("not comparable") for r in c.rows)


def test_cells_folder_accepted_and_env_differences_listed(tmp_path):
    recs = mk.full_records(seeds=(0,))
    mk.write_set(tmp_path / "a", recs)
    other = copy.deepcopy(recs)
    for r in other:
        r["env"]["torch"] = "9.9.9"
        r["speed"]["threads"] = 4
        r["speed"]["jobs"] = 2  # measured two cells side by side (run --jobs 2)
    mk.write_set(tmp_path / "b", other)
    written, rep = build_report(tmp_path / "a" / "cells", tmp_path / "out", compare=tmp_path / "b")
    assert rep.rs.root == tmp_path / "a"
    md = written["report.md"].read_text()
    assert "environment differs: torch: this 2.14.1 vs base 9.9.9" in md
    assert "environment differs: speed_threads" in md and "not like for like" in md
    assert "environment differs: speed_jobs" in md
    assert "- cells side by side (run --jobs): 1" in md  # records without the field ran one at a time
    written, _ = build_report(tmp_path / "b", tmp_path / "out_b")
    assert "- cells side by side (run --jobs): 2" in written["report.md"].read_text()


def test_compare_lists_claims_that_changed(tmp_path):
    written, _ = build_report(FIX / "partial", tmp_path, compare=FIX / "full")
    section = written["report.md"].read_text().split("### Claims in both sets", 1)[1].split("###", 1)[0]
    changed = [line for line in section.splitlines() if line.endswith("| yes |")]
    # accuracy claims lack seeds here; mixing by depth has one seed (3 layers a part, t(0.975, 2) = 4.30): its
    # intervals cross 0. Group-conv speed is decided by the timing repeats in both sets.
    assert len(changed) == 3 and all("UNDECIDED | HELD" in line for line in changed)
    assert not any(line.startswith("| Group-convolution") for line in changed)


def test_compare_flags_changed_settings():
    from reports.compare import cell_deltas
    from reports.records import records_frame

    a = mk.full_records(seeds=(0,))
    b = copy.deepcopy(a)
    b[0]["config"]["trainer"]["max_epochs"] = 5
    cd = cell_deltas(records_frame(a), records_frame(b))
    assert (cd["flags"].str.contains("settings")).sum() == 1


def test_members_of_different_groups_matched_to_one_reference_share_a_budget():
    recs = mk.full_records()
    conv = {r["cell"]["seed"]: r["cell_id"] for r in recs if r["cell"]["op"] == "conv"}
    for r in recs:
        if r["cell"]["op"] == "sa":
            r["cell"]["group"] = "budget_sa"
        if r["match"]:
            r["match"]["reference_cell"] = conv[r["cell"]["seed"]]
    c = _claims(recs)["acmix_vs_single_path"]
    assert c.status == HELD
    assert {r["budget"] for r in c.rows} == {"matched to resnet26-conv"}


def test_accuracy_at_chance_or_identical_seeds_cannot_decide():
    recs = mk.full_records()
    for r in recs:  # every model near chance on 10 classes: untrained
        r["metrics"]["top1"] = r["metrics"]["top1"] / 10
    c = _claims(recs)
    assert c["acmix_vs_single_path"].status == UNDECIDED and c["learnable_multigroup"].status == UNDECIDED
    assert all(r["verdict"] == UNDECIDED and r["note"].startswith("at chance") for r in c["acmix_vs_single_path"].rows)
    recs = mk.full_records()
    for r in recs:  # every seed of a configuration gives the same accuracy
        r["metrics"]["top1"] = mk.TOP1[(r["cell"]["op"], r["cell"]["shift"])] / 100
    c = _claims(recs)
    assert c["learnable_multigroup"].status == UNDECIDED
    assert all(r["verdict"] == UNDECIDED and r["note"].startswith("no spread") for r in c["learnable_multigroup"].rows)


def test_release_acmix_decides_when_other_variants_share_the_budget():
    recs = mk.full_records()
    for r in recs:
        if r["cell"]["shift"] == "tensor":  # a weak ACmix variant in the same budget does not decide
            r["cell"]["group"] = "budget"
            r["match"] = dict(recs[0]["match"] or {}, group="budget", reference_cell="resnet26-conv", target_macs=101_000_000,
                              macs=100_600_000, rel_error=-0.004, tolerance=0.01)
            r["metrics"]["top1"] -= 0.05
    c = _claims(recs)["acmix_vs_single_path"]
    assert c.status == HELD
    weak = [r for r in c.rows if "tensor" in r["acmix"]]
    assert weak and all(not r["deciding"] and r["verdict"] == "worse" for r in weak)


def test_claims_json_compares_every_pair_of_the_three_operators():
    """conv vs sa rides along as context (not deciding): every pair of conv, sa and acmix has an interval."""
    from reports.claims import claims_document
    from reports.records import records_frame
    recs = mk.full_records()
    doc = claims_document(check_claims(records_frame(recs), recs), 0.5)
    rows = [c for c in doc["comparisons"] if c["claim"] == "acmix_vs_single_path" and c["metric"] == "top1"]
    ops = lambda label: label.split()[0].split("-")[1]  # noqa: E731
    assert {frozenset((ops(r["a"]), ops(r["b"]))) for r in rows} == {frozenset(p) for p in
                                                                      (("acmix", "conv"), ("acmix", "sa"), ("conv", "sa"))}
    context = [r for r in rows if not r["deciding"]]
    assert [(r["a"], r["b"]) for r in context] == [("resnet26-conv", "resnet26-sa")]
    c = context[0]
    assert c["ci_low"] <= c["diff"] <= c["ci_high"] and c["verdict"] in ("better", "worse", "equivalent", "undecided")
    assert c["n_a"] == c["n_b"] == 3
