"""Two result sets side by side: deltas per matching cell, flags beyond the measured noise.

Cells match by cell_id, else by (configuration, seed) so that a re-run whose ids
changed (another commit, another config hash) still pairs up. The report's own
RESULTS_DIR is "this", the --compare directory is "base"; delta = this - base.

The noise rules are in RULES (the report prints them).
"""
from __future__ import annotations

import math

import pandas as pd

from . import stats
from .tables import seed_stats, summary_table

RULES = [
    "top-1/top-5 of one cell: flagged when |delta| > 2 x the seed std of its configuration, pooled over the sides "
    "that have two or more seeds (sqrt of the mean variance); 'no spread' when neither side has.",
    "top-1 per configuration (seeds pooled): delta of means with its 95% Student t interval, Welch's (the two "
    "sets are separate runs), SE = sqrt(s^2/n_this + s^2/n_base) with each side's own std, or the other side's "
    "where a side has one seed (then df = that side's n - 1); flagged 'changed' when the interval excludes 0.",
    "throughput and latency: flagged when |delta of medians| > (noise_this + noise_base)/2, noise = timing IQR "
    "(per configuration: max of IQR and the range of per-seed medians), i.e. the bands median +- noise/2 do not overlap.",
    "params and MACs are exact counts: any change is flagged; so is any change of status, and of the run "
    "settings (the record's trainer/data/optim/measure config, flag 'settings').",
]
SPEED = ("infer_samples_per_s", "train_samples_per_s", "latency_b1_ms")
ENV_KEYS = ("torch", "speed_device", "speed_threads", "speed_jobs", "hostname", "git_commit", "settings")


def pair_cells(this: pd.DataFrame, base: pd.DataFrame) -> tuple[list[tuple[int, int]], list[str], list[str]]:
    """Index pairs (this, base), and cell ids found only in this / only in base."""
    by_id = {cid: i for i, cid in enumerate(base["cell_id"])}
    by_cfg = {(c, str(s)): i for i, (c, s) in enumerate(zip(base["config"], base["seed"]))}
    pairs, used = [], set()
    for i, (cid, cfg, seed) in enumerate(zip(this["cell_id"], this["config"], this["seed"])):
        j = by_id.get(cid)
        if j is None or j in used:
            j = by_cfg.get((cfg, str(seed)))
        if j is not None and j not in used:
            pairs.append((i, j))
            used.add(j)
    only_this = [this["cell_id"].iloc[i] for i in range(len(this)) if i not in {p[0] for p in pairs}]
    only_base = [base["cell_id"].iloc[j] for j in range(len(base)) if j not in used]
    return pairs, only_this, only_base


def _seed_std(frame, config, metric) -> tuple[float, int]:
    _, s, n = seed_stats(frame[(frame["config"] == config) & (frame["status"] == "ok")][metric])
    return s, n


def cell_deltas(this: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    pairs, _, _ = pair_cells(this, base)
    rows = []
    for i, j in pairs:
        a, b = this.iloc[i], base.iloc[j]
        row = {"cell_id": a["cell_id"], "label": a["label"], "dataset": a["dataset"], "seed": a["seed"],
               "status": a["status"] if a["status"] == b["status"] else f"{b['status']} -> {a['status']}"}
        flags = []
        if a["status"] != b["status"]:
            flags.append("status")
        if a["settings"] != b["settings"]:
            flags.append("settings")  # trainer/data/optim/measure differ: deltas are not a like-for-like rerun
        for k in ("params", "macs"):
            row[f"{k}_delta"] = a[k] - b[k]
            if not (math.isnan(a[k]) and math.isnan(b[k])) and a[k] != b[k]:
                flags.append(k)
        for m in ("top1", "top5"):
            d = a[m] - b[m]
            sa, na = _seed_std(this, a["config"], m)
            sb, nb = _seed_std(base, b["config"], m)
            var = [x ** 2 for x, n in ((sa, na), (sb, nb)) if n > 1]
            noise = 2 * math.sqrt(sum(var) / len(var)) if var else math.nan
            row[f"{m}_this"], row[f"{m}_base"], row[f"{m}_delta"], row[f"{m}_noise"] = a[m], b[m], d, noise
            if not math.isnan(d) and not math.isnan(noise) and abs(d) > noise:
                flags.append(m)
        for k in SPEED:
            d = a[k] - b[k]
            noise = (a[f"{k}_iqr"] + b[f"{k}_iqr"]) / 2
            row[f"{k}_this"], row[f"{k}_base"], row[f"{k}_delta"] = a[k], b[k], d
            row[f"{k}_rel"] = d / b[k] if b[k] else math.nan
            row[f"{k}_noise"] = noise
            if not math.isnan(d) and not math.isnan(noise) and abs(d) > noise:
                flags.append(k)
        row["peak_mem_mb_delta"] = a["peak_mem_mb"] - b["peak_mem_mb"]
        row["wall_s_delta"] = a["wall_s"] - b["wall_s"]
        row["flags"] = ", ".join(flags)
        rows.append(row)
    return pd.DataFrame(rows)


def config_deltas(this: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    """Per configuration present in both: top-1 mean over seeds, delta, 2 SE, flag."""
    sa, sb = summary_table(this), summary_table(base)
    rows = []
    for _, a in sa.iterrows():
        m = sb[sb["config"] == a["config"]]
        if not len(m):
            continue
        b = m.iloc[0]
        d = a["top1_mean"] - b["top1_mean"]
        s_this = a["top1_std"] if a["top1_n"] > 1 else b["top1_std"] if b["top1_n"] > 1 else math.nan
        s_base = b["top1_std"] if b["top1_n"] > 1 else s_this
        lo = hi = math.nan
        if a["top1_n"] > 0 and b["top1_n"] > 0 and not math.isnan(s_this):
            se = math.sqrt(s_this ** 2 / a["top1_n"] + s_base ** 2 / b["top1_n"])
            if a["top1_n"] > 1 and b["top1_n"] > 1:
                df = stats.welch_df(s_this ** 2, a["top1_n"], s_base ** 2, b["top1_n"])
            else:  # one side borrowed the other's std: that side's degrees of freedom
                df = max(a["top1_n"], b["top1_n"]) - 1.0
            if se > 0 and not math.isnan(df):
                h = stats.t_crit(df) * se
                lo, hi = d - h, d + h
                flag = "changed" if lo > 0 or hi < 0 else "within noise"
            else:
                flag = "changed" if d != 0 else "within noise"  # no spread on either side: any change counts
        else:
            se, flag = math.nan, "no spread"
        sp = a["infer_samples_per_s"] - b["infer_samples_per_s"]
        noise = (_nz(a["infer_samples_per_s_iqr"], a["infer_samples_per_s_seed_range"])
                 + _nz(b["infer_samples_per_s_iqr"], b["infer_samples_per_s_seed_range"])) / 2
        rows.append({"dataset": a["dataset"], "label": a["label"],
                     "top1_this": a["top1_mean"], "top1_this_std": a["top1_std"], "top1_this_n": a["top1_n"],
                     "top1_base": b["top1_mean"], "top1_base_std": b["top1_std"], "top1_base_n": b["top1_n"],
                     "top1_delta": d, "top1_2se": 2 * se, "top1_ci_low": lo, "top1_ci_high": hi, "top1_flag": flag,
                     "infer_this": a["infer_samples_per_s"], "infer_base": b["infer_samples_per_s"],
                     "infer_delta": sp, "infer_noise": noise,
                     "infer_flag": ("changed" if abs(sp) > noise else "within noise") if not math.isnan(sp + noise)
                     else "no spread"})
    return pd.DataFrame(rows)


def _nz(*xs) -> float:
    v = [x for x in xs if isinstance(x, float) and not math.isnan(x)]
    return max(v) if v else math.nan


def env_differences(this: pd.DataFrame, base: pd.DataFrame) -> list[str]:
    """Environment fields whose values differ between the sets (speed is comparable only on the same machine)."""
    out = []
    for k in ENV_KEYS:
        va = sorted({str(x) for x in this[k].dropna()})
        vb = sorted({str(x) for x in base[k].dropna()})
        if va != vb:
            out.append(f"{k}: this {', '.join(va) or 'n/a'} vs base {', '.join(vb) or 'n/a'}")
    return out
