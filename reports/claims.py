"""The paper's claims checked against one result set.

Each claim ends as "held", "not held" or "not enough data", with the rows
(numbers and spread) that decided it. The rules are in RULES (the report prints them).
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field

import pandas as pd

from .tables import match_table, mixing_raw, seed_stats, shift_table, summary_table

RULES = [
    "Accuracy differences use seeds: d = mean_a - mean_b, SE = sqrt(s_a^2/n_a + s_b^2/n_b) (sample std). "
    "'better' when d > 2 SE, 'worse' when d < -2 SE, else 'within noise'. With fewer than two seeds on either "
    "side, or when every seed gave the same value, the spread is unknown: 'no spread'. Accuracy within noise or "
    "without spread cannot decide: not enough data. Neither can accuracy at or below 1.5 x chance "
    "(1/num_classes): such a model has not learned yet.",
    "Speed differences use the timing spread: noise of a side = max(its timing IQR, range of its per-seed medians). "
    "'faster' when the medians differ by more than half the two noises summed (the bands median +- noise/2 do not "
    "overlap), 'slower' when the same holds the other way, else 'within noise'. A speed-up whose speeds are equal "
    "within the measured noise is not held (the timing spread is of the quantity itself, from many repeats).",
    "Speeds measured on different devices or thread counts are not compared (not enough data).",
    "A claim is held when every deciding comparison goes its way, not held when any deciding comparison goes "
    "against it (beyond noise; for speed also within noise), and not enough data otherwise, including when the "
    "cells it needs are missing.",
]
HELD, NOT_HELD, NED = "held", "not held", "not enough data"
K_SE = 2.0
CHANCE_FACTOR = 1.5  # top-1 at or below 1.5x chance (1/num_classes): the model has not learned; no accuracy verdict
MIN_LOG_RATIO = 0.05  # |alpha/beta| at least 5% from 1 before a layer "leans" (tiny drifts from init do not count)
GCONV_SHIFTS = ("fixed", "learnable", "multigroup")


@dataclass
class Claim:
    key: str
    statement: str
    status: str
    summary: str
    method: str
    rows: list[dict] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def compare_acc(a, b) -> dict:
    """Seed statistics of two accuracy samples (lists of top-1) and the verdict for 'a beats b'."""
    ma, sa, na = seed_stats(a)
    mb, sb, nb = seed_stats(b)
    d = ma - mb
    if na < 2 or nb < 2:
        se, verdict = math.nan, "no spread"
    else:
        se = math.sqrt(sa ** 2 / na + sb ** 2 / nb)
        verdict = "better" if d > K_SE * se else "worse" if d < -K_SE * se else "within noise"
        if se <= 1e-9 * max(1.0, abs(ma), abs(mb)):  # every seed gave the same value (to rounding): spread unmeasured
            verdict = "no spread (seeds identical)"
    if na == 0 or nb == 0:
        verdict = "missing"
    return {"a_mean": ma, "a_std": sa, "a_n": na, "b_mean": mb, "b_std": sb, "b_n": nb, "diff": d, "se": se,
            "verdict": verdict}


def compare_speed(ra, rb, key: str = "infer_samples_per_s") -> dict:
    """Speed of summary rows a vs b (higher is faster for samples/s)."""
    ma, mb = ra[key], rb[key]
    noise_a = _nanmax(ra[f"{key}_iqr"], ra[f"{key}_seed_range"])
    noise_b = _nanmax(rb[f"{key}_iqr"], rb[f"{key}_seed_range"])
    gap = (noise_a + noise_b) / 2 if not (math.isnan(noise_a) or math.isnan(noise_b)) else math.nan
    d = ma - mb
    if math.isnan(d):
        verdict = "missing"
    elif math.isnan(gap):
        verdict = "no spread"
    else:
        verdict = "faster" if d > gap else "slower" if d < -gap else "within noise"
    if verdict != "missing" and ra["speed_on"] != rb["speed_on"]:
        verdict = "not comparable (measured on different devices or thread counts)"
    return {"a_median": ma, "a_noise": noise_a, "b_median": mb, "b_noise": noise_b, "diff": d,
            "ratio": ma / mb if mb else math.nan, "noise_gap": gap, "verdict": verdict,
            "same_machine": ra["speed_on"] == rb["speed_on"]}


def _nanmax(*xs) -> float:
    v = [float(x) for x in xs if isinstance(x, numbers.Real) and not math.isnan(x)]
    return max(v) if v else math.nan


def _decide(verdicts: list[str], good: str, bad: tuple[str, ...]) -> str:
    if not verdicts:
        return NED
    if any(v in bad for v in verdicts):
        return NOT_HELD
    if all(v == good for v in verdicts):
        return HELD
    return NED


def _at_chance(*rows) -> bool:
    """True when any of these summary rows has mean top-1 at or below CHANCE_FACTOR x chance."""
    for r in rows:
        try:
            k = float(r.get("num_classes"))
        except (TypeError, ValueError):
            continue
        if k > 0 and not math.isnan(k) and r["top1_mean"] <= CHANCE_FACTOR * 100.0 / k:
            return True
    return False


def _acc_verdict(c: dict, *rows) -> str:
    return "at chance (not trained enough)" if _at_chance(*rows) else c["verdict"]


def _acc_values(frame, config) -> list[float]:
    g = frame[(frame["config"] == config) & (frame["status"] == "ok")]
    return g["top1"].dropna().tolist()


def _fmt(x, nd=2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


# ---------------------------------------------------------------------------- claim 1

def _budgets(frame: pd.DataFrame, s: pd.DataFrame) -> dict:
    """Matched-FLOPs sets: {(dataset, budget name): [summary configs]}. Cells matched to the same reference
    configuration share a budget even when the config put them in different groups; the reference itself
    belongs to it; where the reference is not in the records, the group name is the budget."""
    cfg_of = dict(zip(frame["cell_id"], frame["config"]))
    label_of = dict(zip(s["config"], s["label"]))
    out: dict = {}
    for _, r in s[s["group"].notna() & (s["group"].astype(str) != "")].iterrows():
        refs = frame[(frame["config"] == r["config"]) & frame["match_reference_cell"].notna()]["match_reference_cell"]
        ref_cfgs = sorted({cfg_of[x] for x in refs if x in cfg_of})
        if ref_cfgs and ref_cfgs[0] in label_of:
            key = (r["dataset"], f"matched to {label_of[ref_cfgs[0]]}")
            out.setdefault(key, set()).update({r["config"], ref_cfgs[0]})
        else:
            out.setdefault((r["dataset"], f"group {r['group']}"), set()).add(r["config"])
    return {k: sorted(v) for k, v in sorted(out.items())}


def claim_acmix_beats_single_path(frame: pd.DataFrame) -> Claim:
    statement = "ACmix beats both single-path variants (convolution, self-attention) at matched FLOPs."
    method = ("Per dataset and matched-FLOPs budget (cells matched to the same reference, the reference included; "
              "else one group): ACmix against the best convolution and the best self-attention configuration of the "
              "same budget (top-1, mean over seeds). Deciding: the release's ACmix (multigroup shift, learnable "
              "mixing) where present, else every ACmix configuration; other ACmix variants are shown, not deciding. "
              "Members must be within their MACs tolerance. Rule: better if diff > 2 SE of the seed means.")
    s = summary_table(frame)
    rows, verdicts, notes = [], [], []
    budgets = _budgets(frame, s) if len(s) else {}
    if not budgets:
        return Claim("acmix_vs_single_path", statement, NED, "no matched-FLOPs group in the records", method)
    mt = match_table(frame)
    off_labels = set(mt[mt["within"] == False]["label"])  # noqa: E712
    families = {"acmix": ("acmix",), "conv": ("conv", "dconv"), "sa": ("sa",)}
    for (ds, budget), cfgs in budgets.items():
        g = s[s["config"].isin(cfgs)]
        need = {fam: g[g["op"].isin(ops) & (g["top1_n"] > 0)] for fam, ops in families.items()}
        miss = [op for op, d in need.items() if not len(d)]
        if miss:
            notes.append(f"{ds}, {budget}: no finished {', '.join(miss)} cell")
            verdicts.append("missing")
            continue
        release = need["acmix"][(need["acmix"]["shift"] == "multigroup") & (need["acmix"]["mixing"] == "learnable")]
        deciding = set(release["config"]) if len(release) else set(need["acmix"]["config"])
        for op in ("conv", "sa"):
            best = need[op].sort_values("top1_mean", ascending=False).iloc[0]
            for _, a in need["acmix"].iterrows():
                c = compare_acc(_acc_values(frame, a["config"]), _acc_values(frame, best["config"]))
                matched = not (off_labels & {a["label"], best["label"]})
                v = _acc_verdict(c, a, best) if matched else "not matched"
                if a["config"] in deciding:
                    verdicts.append(v)
                rows.append({"dataset": ds, "budget": budget, "acmix": a["label"], "baseline": best["label"],
                             "deciding": a["config"] in deciding,
                             "acmix_macs": a["macs"], "baseline_macs": best["macs"],
                             "acmix_top1": c["a_mean"], "acmix_std": c["a_std"], "acmix_n": c["a_n"],
                             "baseline_top1": c["b_mean"], "baseline_std": c["b_std"], "baseline_n": c["b_n"],
                             "diff": c["diff"], "se": c["se"], "verdict": v})
    status = _decide(verdicts, "better", ("worse",))
    summary = _summarise(rows, "diff", "top-1 points", notes)
    return Claim("acmix_vs_single_path", statement, status, summary, method, rows)


def _summarise(rows, key, unit, notes) -> str:
    parts = [f"{r.get('acmix', r.get('a', ''))} vs {r.get('baseline', r.get('b', ''))}: "
             f"{'+' if r[key] >= 0 else ''}{_fmt(r[key])} {unit} ({r['verdict']}"
             + (f", 2 SE = {_fmt(2 * r['se'])}" if isinstance(r.get('se'), float) and not math.isnan(r['se']) else "")
             + (", not deciding" if r.get("deciding") is False else "") + ")" for r in rows if isinstance(r.get(key), float) and not math.isnan(r[key])]
    return "; ".join(parts + notes) or "no comparison possible"


# ---------------------------------------------------------------------------- claim 2

def claim_gconv_faster(frame: pd.DataFrame) -> Claim:
    statement = "Group-convolution shifts are faster at inference than tensor shifts."
    method = ("Configurations equal except for the shift. Deciding pair: 'fixed' (group conv, one-hot kernels: the "
              "paper's like-for-like swap) vs 'tensor'; where 'fixed' is absent, every group-conv shift present. "
              "Inference samples/s, median over timing repeats; noise = max(timing IQR, range over seeds); faster if "
              "the medians differ by more than half the summed noise. Other group-conv shifts are shown, not deciding.")
    st = shift_table(frame)
    s = summary_table(frame)
    rows, verdicts, notes = [], [], []
    if not len(st):
        return Claim("gconv_faster", statement, NED, "no configuration measured with more than one shift", method)
    for fam, g in st.groupby("family", sort=False):
        shifts = set(g["shift"])
        if "tensor" not in shifts:
            notes.append(f"{g['model'].iloc[0]}: no 'tensor' shift cell")
            continue
        deciding = ["fixed"] if "fixed" in shifts else [x for x in GCONV_SHIFTS if x in shifts]
        t = _row_for(s, g, "tensor")
        for sh in GCONV_SHIFTS:
            if sh not in shifts:
                continue
            c = compare_speed(_row_for(s, g, sh), t)
            decides = sh in deciding
            if decides:
                verdicts.append(c["verdict"])
            rows.append({"dataset": g["dataset"].iloc[0], "model": g["model"].iloc[0], "a": sh, "b": "tensor",
                         "a_samples_per_s": c["a_median"], "a_noise": c["a_noise"],
                         "b_samples_per_s": c["b_median"], "b_noise": c["b_noise"], "diff": c["diff"],
                         "speedup": c["ratio"], "verdict": c["verdict"], "deciding": decides,
                         "same_machine": c["same_machine"]})
    status = _decide(verdicts, "faster", ("slower", "within noise"))
    parts = [(f"{r['model']} {r['a']} vs tensor: x{_fmt(r['speedup'])} ({_fmt(r['a_samples_per_s'], 1)} vs "
              f"{_fmt(r['b_samples_per_s'], 1)} samples/s, noise {_fmt(r['a_noise'], 1)}/{_fmt(r['b_noise'], 1)}; "
              f"{r['verdict']}{'' if r['deciding'] else ', not deciding'})") if r["verdict"] != "missing" else
             f"{r['model']} {r['a']} vs tensor: no finished cell with a speed measurement" for r in rows]
    return Claim("gconv_faster", statement, status, "; ".join(parts + notes) or "no comparison possible", method, rows)


def _row_for(summary, fam_rows, shift):
    """The summary row (all seeds) of the family's configuration with this shift."""
    cfg = fam_rows[fam_rows["shift"] == shift]["config"].iloc[0]
    return summary[summary["config"] == cfg].iloc[0]


# ---------------------------------------------------------------------------- claim 3

def claim_learnable_multigroup(frame: pd.DataFrame) -> Claim:
    statement = "Learnable shift kernels add accuracy over fixed ones, and multiple groups add accuracy over one."
    method = ("Configurations equal except for the shift: 'learnable' vs 'fixed' (learnable kernels), 'multigroup' vs "
              "'learnable' (multiple groups). Top-1, mean over seeds; better if diff > 2 SE. Held when both steps are "
              "better.")
    st = shift_table(frame)
    s = summary_table(frame)
    rows, notes = [], []
    verdicts = {"learnable kernels": [], "multiple groups": []}
    for fam, g in (st.groupby("family", sort=False) if len(st) else []):
        shifts = set(g["shift"])
        for name, a, b in (("learnable kernels", "learnable", "fixed"), ("multiple groups", "multigroup", "learnable")):
            if not {a, b} <= shifts:
                notes.append(f"{g['model'].iloc[0]}: {name} needs '{a}' and '{b}' cells")
                continue
            ra, rb = _row_for(s, g, a), _row_for(s, g, b)
            c = compare_acc(_acc_values(frame, ra["config"]), _acc_values(frame, rb["config"]))
            c["verdict"] = _acc_verdict(c, ra, rb)
            verdicts[name].append(c["verdict"])
            rows.append({"step": name, "dataset": ra["dataset"], "a": ra["label"], "b": rb["label"],
                         "a_top1": c["a_mean"], "a_std": c["a_std"], "a_n": c["a_n"],
                         "b_top1": c["b_mean"], "b_std": c["b_std"], "b_n": c["b_n"], "diff": c["diff"],
                         "se": c["se"], "verdict": c["verdict"]})
    per = {k: _decide(v, "better", ("worse",)) for k, v in verdicts.items()}
    status = NOT_HELD if NOT_HELD in per.values() else HELD if all(v == HELD for v in per.values()) else NED
    summary = "; ".join(f"{k}: {v}" for k, v in per.items()) + ". " + _summarise(
        [dict(r, acmix=f"{r['a']}", baseline=r["b"]) for r in rows], "diff", "top-1 points", notes)
    return Claim("learnable_multigroup", statement, status, summary, method, rows)


# ---------------------------------------------------------------------------- claim 4

def claim_mixing_by_depth(records: list[dict]) -> Claim:
    statement = "Learned mixing leans to convolution early (|beta| > |alpha|) and to attention late (|alpha| > |beta|)."
    method = ("ACmix configurations with learnable mixing: log|alpha/beta| per layer. Early = the first third of the "
              "layer depths, late = the last third; mean and SE over all (seed, layer) values of each part. Held when "
              "early mean + 2 SE < 0 and late mean - 2 SE > 0, both beyond |log ratio| 0.05 (a 5% lean); not held "
              "when either part is beyond 2 SE on the other side; else not enough data (e.g. weights still at "
              "their initial 1:1).")
    raw = mixing_raw(records)
    rows, verdicts = [], []
    if not len(raw):
        return Claim("mixing_by_depth", statement, NED,
                     "no record carries mixing_by_depth (needs ACmix cells with learnable mixing)", method)
    for cfg, g in raw.groupby("config", sort=True):
        depths = sorted(g["depth"].unique())
        if len(depths) < 2:
            verdicts.append("missing")
            rows.append({"label": g["label"].iloc[0], "dataset": g["dataset"].iloc[0], "verdict": "one depth only"})
            continue
        third = max(1, math.ceil(len(depths) / 3))
        early = g[g["depth"].isin(depths[:third])]["log_ratio"].tolist()
        late = g[g["depth"].isin(depths[-third:])]["log_ratio"].tolist()
        me, se_, ne = seed_stats(early)
        ml, sl, nl = seed_stats(late)
        see = se_ / math.sqrt(ne) if ne > 1 else math.nan
        sel = sl / math.sqrt(nl) if nl > 1 else math.nan
        if math.isnan(see) or math.isnan(sel):
            v = "no spread"
        elif me - K_SE * see > 0 or ml + K_SE * sel < 0:
            v = "against"
        elif me + K_SE * see < 0 and ml - K_SE * sel > 0 and me < -MIN_LOG_RATIO and ml > MIN_LOG_RATIO:
            v = "conv early, attention late"
        elif max(abs(me), abs(ml)) < MIN_LOG_RATIO:
            v = "no lean (|log ratio| < %.2f)" % MIN_LOG_RATIO
        else:
            v = "within noise"
        verdicts.append(v)
        rows.append({"label": g["label"].iloc[0], "dataset": g["dataset"].iloc[0],
                     "seeds": int(g["seed"].nunique()), "early_depths": f"{depths[0]}-{depths[third - 1]}",
                     "late_depths": f"{depths[-third]}-{depths[-1]}", "early_log_ratio": me, "early_se": see,
                     "late_log_ratio": ml, "late_se": sel, "verdict": v})
    status = _decide(verdicts, "conv early, attention late", ("against",))
    parts = [f"{r['label']}: early log|a/b| {_fmt(r.get('early_log_ratio'), 3)} +- {_fmt(r.get('early_se'), 3)} (SE), "
             f"late {_fmt(r.get('late_log_ratio'), 3)} +- {_fmt(r.get('late_se'), 3)} ({r['verdict']})" for r in rows]
    return Claim("mixing_by_depth", statement, status, "; ".join(parts), method, rows)


def check_claims(frame: pd.DataFrame, records: list[dict]) -> list[Claim]:
    return [claim_acmix_beats_single_path(frame), claim_gconv_faster(frame), claim_learnable_multigroup(frame),
            claim_mixing_by_depth(records)]


def claims_frame(claims: list[Claim]) -> pd.DataFrame:
    return pd.DataFrame([{"claim": c.key, "statement": c.statement, "status": c.status, "evidence": c.summary}
                         for c in claims])


def claims_json(claims: list[Claim]) -> str:
    return json.dumps([{"claim": c.key, "statement": c.statement, "status": c.status, "summary": c.summary,
                        "method": c.method, "rows": c.rows} for c in claims], indent=1, default=_json_default)


def _json_default(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    try:
        return x.item()
    except AttributeError:
        return str(x)
