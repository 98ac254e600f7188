"""Tables a report shows, built from the flat records frame (reports.records.records_frame).

Conventions: every count is in MACs (FLOPs = 2 MACs appear nowhere here);
accuracy is aggregated over seeds as mean, sample std (ddof=1) and n; speed
keeps the timing's own median and interquartile range (IQR) per cell, and over
seeds the median of the per-seed medians and the largest per-seed IQR.
"""
from __future__ import annotations

import math
import numbers
import re

import numpy as np
import pandas as pd

from .records import STAGES

SUMMARY_KEYS = ["dataset", "backbone", "label", "model", "op", "shift", "mixing", "group", "num_classes"]


def seed_stats(values) -> tuple[float, float, int]:
    """(mean, sample std, n) of the finite values; std is NaN below two values."""
    v = np.asarray([x for x in values if isinstance(x, numbers.Real) and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, int(v.size)


def ok(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "ok"]


def cells_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per cell: identifiers, status, per-stage params and MACs, metrics, speed with spread, memory, wall time."""
    cols = ["cell_id", "status", "reason", "dataset", "model", "op", "shift", "mixing", "group", "seed",
            "count_voice", "params", "macs"]
    for s in STAGES[:-1]:
        cols += [f"params_{s}", f"macs_{s}"]
    cols += ["top1", "top5", "loss", "val_top1", "epochs", "steps",
             "train_samples_per_s", "train_samples_per_s_iqr", "train_samples_per_s_n",
             "infer_samples_per_s", "infer_samples_per_s_iqr", "infer_samples_per_s_n",
             "latency_b1_ms", "latency_b1_ms_iqr", "latency_b1_ms_n",
             "peak_mem_mb", "wall_s", "speed_device", "speed_threads"]
    return frame[cols].sort_values(["dataset", "model", "shift", "mixing", "seed"], na_position="first",
                                   key=lambda c: c.astype(str)).reset_index(drop=True)


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per configuration (all seeds of it): counts, top-1/top-5 mean, std, n, speed with spread, memory, wall."""
    rows = []
    for cfg, g in frame.groupby("config", sort=False):
        good = ok(g)
        first = g.iloc[0]
        row = {k: first[k] for k in SUMMARY_KEYS}
        row["config"] = cfg
        row["seeds_ok"] = ", ".join(str(s) for s in sorted(good["seed"].tolist(), key=str))
        row["cells_not_ok"] = int((g["status"] != "ok").sum())
        src = good if len(good) else g
        row["count_voice"] = src["count_voice"].dropna().iloc[0] if src["count_voice"].notna().any() else None
        row["params"] = _first_finite(src["params"])
        row["macs"] = _first_finite(src["macs"])
        for s in STAGES[:-1]:
            row[f"macs_{s}"] = _first_finite(src[f"macs_{s}"])
            row[f"params_{s}"] = _first_finite(src[f"params_{s}"])
        for m in ("top1", "top5"):
            row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_n"] = seed_stats(good[m])
        for k in ("train_samples_per_s", "infer_samples_per_s", "latency_b1_ms"):
            vals = good[k].dropna()
            row[k] = float(vals.median()) if len(vals) else math.nan
            iq = good[f"{k}_iqr"].dropna()
            row[f"{k}_iqr"] = float(iq.max()) if len(iq) else math.nan
            row[f"{k}_seed_range"] = float(vals.max() - vals.min()) if len(vals) > 1 else math.nan
            row[f"{k}_n"] = int(good[f"{k}_n"].fillna(0).sum())
        row["peak_mem_mb"] = float(good["peak_mem_mb"].max()) if good["peak_mem_mb"].notna().any() else math.nan
        row["wall_s_mean"] = float(good["wall_s"].mean()) if good["wall_s"].notna().any() else math.nan
        devs = sorted({f"{d}/{t} thr" for d, t in zip(good["speed_device"], good["speed_threads"]) if d is not None})
        row["speed_on"] = ", ".join(devs)
        rows.append(row)
    out = pd.DataFrame(rows)
    if len(out):
        out = out.sort_values(["dataset", "backbone", "op", "label"], key=lambda c: c.astype(str)).reset_index(drop=True)
    return out


def _first_finite(series) -> float:
    v = series.dropna()
    return float(v.iloc[0]) if len(v) else math.nan


def stages_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Long format: per configuration and stage, params and MACs (voice named)."""
    rows = []
    for _, r in summary_table(frame).iterrows():
        for s in STAGES:
            p = r["params"] if s == "total" else r[f"params_{s}"]
            m = r["macs"] if s == "total" else r[f"macs_{s}"]
            if isinstance(m, float) and math.isnan(m) and isinstance(p, float) and math.isnan(p):
                continue
            rows.append({"dataset": r["dataset"], "label": r["label"], "voice": r["count_voice"], "stage": s,
                         "params": p, "macs": m})
    return pd.DataFrame(rows, columns=["dataset", "label", "voice", "stage", "params", "macs"])


def match_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per matched-FLOPs group member: achieved MACs vs the group's target, relative error, within tolerance."""
    rows = []
    g = frame[frame["group"].notna() & (frame["group"].astype(str) != "")]
    for cfg, cg in g.groupby("config", sort=False):
        r = cg.iloc[0]
        target = _first_finite(cg["match_target_macs"])
        achieved = _first_finite(cg["match_macs"])
        if math.isnan(achieved):
            achieved = _first_finite(cg["macs"])
        rel = _first_finite(cg["match_rel_error"])
        if math.isnan(rel) and not math.isnan(target) and target:
            rel = (achieved - target) / target
        tol = _first_finite(cg["match_tolerance"])
        within = (abs(rel) <= tol) if not (math.isnan(rel) or math.isnan(tol)) else None
        rows.append({"dataset": r["dataset"], "group": r["group"], "label": r["label"], "op": r["op"],
                     "reference": cg["match_reference_cell"].dropna().iloc[0] if cg["match_reference_cell"].notna().any() else None,
                     "target_macs": target, "macs": achieved, "rel_error": rel, "tolerance": tol, "within": within})
    out = pd.DataFrame(rows, columns=["dataset", "group", "label", "op", "reference", "target_macs", "macs",
                                      "rel_error", "tolerance", "within"])
    return out.sort_values(["dataset", "group", "op"], key=lambda c: c.astype(str)).reset_index(drop=True)


FAMILY_ORDER = ("resnet", "san", "pvt", "swin")  # the paper's order of backbones


def model_family(model) -> str:
    """Backbone family of a registry name, from the name alone: resnet26-acmix -> resnet, swin_t-acmix -> swin,
    san10-acmix -> san, pvt_s-acmix -> pvt (the leading letters); other names give themselves."""
    m = re.match(r"[a-z]+", str(model or "").split(":")[-1].lower())
    return m.group(0) if m else str(model)


def mixing_table(records: list[dict]) -> pd.DataFrame:
    """Per configuration and layer: alpha, beta, |alpha|, |beta|, log|alpha/beta| (mean, std, n over seeds)."""
    from .records import config_key, label_map

    labels = label_map(records)
    raw = []
    for rec in records:
        if rec["status"] != "ok":
            continue
        for d in rec.get("mixing_by_depth") or []:
            try:
                a, b = float(d["alpha"]), float(d["beta"])
                depth = int(d["depth"])
            except (KeyError, TypeError, ValueError):
                continue
            raw.append({"config": config_key(rec["cell"]), "label": labels[config_key(rec["cell"])],
                        "family": model_family(rec["cell"].get("model")),
                        "dataset": rec["cell"].get("dataset"), "layer": d.get("layer"), "depth": depth,
                        "seed": rec["cell"].get("seed"), "abs_alpha": abs(a), "abs_beta": abs(b),
                        "log_ratio": math.log(abs(a) / abs(b)) if a != 0 and b != 0 else math.nan})
    cols = ["dataset", "family", "label", "layer", "depth"]
    out_cols = cols + [f"{q}_{s}" for q in ("abs_alpha", "abs_beta", "log_ratio") for s in ("mean", "std")] + ["n"]
    if not raw:
        return pd.DataFrame(columns=out_cols + ["config"])
    df = pd.DataFrame(raw)
    rows = []
    for (cfg, depth, layer), g in df.groupby(["config", "depth", "layer"], sort=True, dropna=False):
        row = {"config": cfg, "dataset": g["dataset"].iloc[0], "family": g["family"].iloc[0],
               "label": g["label"].iloc[0], "layer": layer, "depth": depth}
        for q in ("abs_alpha", "abs_beta", "log_ratio"):
            row[f"{q}_mean"], row[f"{q}_std"], row["n"] = seed_stats(g[q])
        rows.append(row)
    return pd.DataFrame(rows)[out_cols + ["config"]].sort_values(["family", "label", "depth"]).reset_index(drop=True)


def mixing_raw(records: list[dict]) -> pd.DataFrame:
    """Every (config, seed, layer) log|alpha/beta| value, for the claims."""
    from .records import config_key, label_map

    labels = label_map(records)
    rows = []
    for rec in records:
        if rec["status"] != "ok":
            continue
        for d in rec.get("mixing_by_depth") or []:
            try:
                a, b, depth = abs(float(d["alpha"])), abs(float(d["beta"])), int(d["depth"])
            except (KeyError, TypeError, ValueError):
                continue
            if a > 0 and b > 0:
                rows.append({"config": config_key(rec["cell"]), "label": labels[config_key(rec["cell"])],
                             "dataset": rec["cell"].get("dataset"), "seed": rec["cell"].get("seed"),
                             "depth": depth, "log_ratio": math.log(a / b)})
    return pd.DataFrame(rows, columns=["config", "label", "dataset", "seed", "depth", "log_ratio"])


def shift_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The shift implementations side by side: configurations equal except for the shift."""
    s = summary_table(frame)
    if not len(s):
        return s
    s = s[s["shift"].notna()].copy()
    s["family"] = s.apply(lambda r: _family_key(r), axis=1)
    keep = s.groupby("family")["shift"].transform("nunique") > 1
    cols = ["dataset", "model", "mixing", "shift", "top1_mean", "top1_std", "top1_n",
            "infer_samples_per_s", "infer_samples_per_s_iqr", "train_samples_per_s", "train_samples_per_s_iqr",
            "latency_b1_ms", "latency_b1_ms_iqr", "params", "macs", "speed_on", "family", "config"]
    order = {"tensor": 0, "fixed": 1, "learnable": 2, "multigroup": 3}
    out = s[keep][cols].copy()
    out["_o"] = out["shift"].map(lambda x: order.get(x, 9))
    return out.sort_values(["family", "_o"]).drop(columns="_o").reset_index(drop=True)


def _family_key(r) -> str:
    """A configuration's identity with the shift taken out (and the matched group, which may name one shift only)."""
    import json

    cfg = json.loads(r["config"])
    cfg.pop("shift", None)
    cfg.pop("group", None)
    ov = dict(cfg.get("overrides") or {})
    ov.pop("shift", None)
    ov.pop("widths", None)
    cfg["overrides"] = ov
    return json.dumps(cfg, sort_keys=True, default=str)


def voices_table(records: list[dict]) -> pd.DataFrame:
    """Total params and MACs per counter voice for each configuration (the counters cross-checked), with each
    voice's MACs relative to the formula voice. Only the first finished record of a configuration is read."""
    from .records import config_key, label_map

    labels = label_map(records)
    rows, seen = [], set()
    for rec in sorted(records, key=lambda r: r["status"] != "ok"):
        key = config_key(rec["cell"])
        voices = ((rec.get("counts") or {}).get("voices")) or {}
        if key in seen or not voices:
            continue
        seen.add(key)
        ref = ((voices.get("formula") or {}).get("total") or {}).get("macs")
        for v, d in voices.items():
            t = (d or {}).get("total") or {}
            macs = t.get("macs")
            rows.append({"dataset": rec["cell"].get("dataset"), "label": labels[key], "voice": v,
                         "params": t.get("params"), "macs": macs,
                         "macs_vs_formula": (macs / ref) if isinstance(macs, (int, float)) and ref else math.nan,
                         "stage2_macs": ((d or {}).get("stage2") or {}).get("macs")})
    return pd.DataFrame(rows, columns=["dataset", "label", "voice", "params", "macs", "macs_vs_formula", "stage2_macs"])
