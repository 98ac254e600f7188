"""The paper's claims checked against one result set.

Every comparison of two configurations gives the difference a - b with its 95% confidence interval
(Student t over seeds for accuracy, over timing repeats for speed) and a verdict against an
equivalence margin: better, worse, equivalent or undecided (reports.stats). Each claim ends as
"held", "not held" or "undecided" from the verdicts of its deciding comparisons. The rules are in
RULES (the report prints them); claims.json holds every comparison and claim (claims_document).
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field

import pandas as pd

from . import stats
from .stats import BETTER, EQUIVALENT, UNDECIDED, WORSE
from .tables import match_table, mixing_raw, seed_stats, shift_table, summary_table

DEFAULT_MARGIN = 0.5  # top-1 points: the equivalence margin when neither config (report.margin) nor --margin sets one
SPEED_MARGIN = 0.05  # speed: equivalent when the CI of the difference lies within +-5% of b's samples/s
IQR_TO_SD = 1.3489795003921634  # IQR of a normal law in standard deviations (2 x 0.6745)
MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2)  # standard error of a normal sample's median over that of its mean
HELD, NOT_HELD = "held", "not held"
CHANCE_FACTOR = 1.5  # top-1 at or below 1.5x chance (1/num_classes): the model has not learned; no accuracy verdict
MIN_LOG_RATIO = 0.05  # |alpha/beta| at least 5% from 1 before a layer "leans" (tiny drifts from init do not count)
GCONV_SHIFTS = ("fixed", "learnable", "multigroup")


def rules(margin: float = DEFAULT_MARGIN) -> list[str]:
    """The decision rules in words, with the margin in force."""
    return [
        "Accuracy (top-1, percent): d = mean_a - mean_b over seeds with a 95% Student t interval. Paired by seed "
        "(d_i = a_i - b_i, d +- t(0.975, n-1) s_d / sqrt(n)) when both configurations ran the same seeds on the same "
        "dataset and data settings (same subsets, batch size, augmentation and process layout: the same images in the "
        "same order per seed); otherwise Welch (d +- t(0.975, nu) sqrt(s_a^2/n_a + s_b^2/n_b), nu the "
        "Welch-Satterthwaite degrees of freedom). Each comparison says which.",
        f"Verdict against the equivalence margin m = {margin:g} top-1 points (report.margin in the config, "
        "--margin on the command line): 'better' when the whole CI is above 0, 'worse' when it is below 0, "
        "'equivalent' when it lies inside (-m, +m), else 'undecided'. A CI that excludes 0 is better/worse even "
        "when it also lies inside the margin (the difference is real; its size is in the numbers).",
        "Undecided comparisons say how many seeds would decide them at the spread observed: the smallest n with "
        "t(0.975, n-1) s / sqrt(n) < max(|d|, m - |d|) (paired: s = sd of the paired differences; Welch: "
        "s = sqrt(s_a^2 + s_b^2), n seeds per side, Welch's df), assuming d and s stay as measured. For speed the same "
        "count is of timing repeats per side (s scaled by sqrt(pi/2), a median's).",
        "No verdict (undecided) with fewer than two seeds on a side (spread unknown), when every seed gave the same "
        "value (spread unmeasured), when a model is at or below 1.5 x chance top-1 (not trained yet), or when the "
        "members of a matched-FLOPs budget are outside their MACs tolerance.",
        f"Speed (samples/s, higher is better): each configuration's timing repeats pooled over its seeds: centre = "
        f"the repeat-weighted mean of the per-seed medians, sd from the law of total variance with each seed's sd = "
        f"IQR / 1.349 (normal timings), standard error = sqrt(pi/2) sd / sqrt(N) (a median's), N = all repeats; "
        f"Welch t interval of the difference. Equivalence margin {SPEED_MARGIN:.0%} of b's samples/s. Speeds "
        "measured on different devices or thread counts are not compared (undecided).",
        "A claim is held when every deciding comparison goes its way ('better'), not held when any goes against it "
        "('worse', or 'equivalent': no gain beyond the margin), and undecided otherwise, including when the cells "
        "it needs are missing.",
    ]


RULES = rules()


@dataclass
class Claim:
    key: str
    statement: str
    status: str
    summary: str
    method: str
    rows: list[dict] = field(default_factory=list)
    comparisons: list[dict] = field(default_factory=list)  # the claims.json objects of this claim

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


# ---------------------------------------------------------------------------- comparisons

def _seed_values(frame: pd.DataFrame, config: str, metric: str = "top1") -> dict:
    """{seed: (value, data_settings)} of the finished cells of one configuration with a finite metric."""
    g = frame[(frame["config"] == config) & (frame["status"] == "ok")]
    out = {}
    for seed, v, ds in zip(g["seed"], g[metric], g["data_settings"]):
        if isinstance(v, numbers.Real) and math.isfinite(v):
            out[str(seed)] = (float(v), ds)
    return out


def compare_acc(frame: pd.DataFrame, cfg_a: str, cfg_b: str, margin: float = DEFAULT_MARGIN,
                metric: str = "top1") -> dict:
    """Top-1 of configuration a vs b: difference, 95% CI (paired by seed when the data order is shared), verdict."""
    va, vb = _seed_values(frame, cfg_a, metric), _seed_values(frame, cfg_b, metric)
    a = [v for v, _ in va.values()]
    b = [v for v, _ in vb.values()]
    paired = (len(va) >= 2 and set(va) == set(vb) and all(va[s][1] == vb[s][1] for s in va))
    if paired:
        seeds = sorted(va, key=lambda s: (len(s), s))
        iv = stats.paired_ci([va[s][0] for s in seeds], [vb[s][0] for s in seeds])
    else:
        iv = stats.welch_ci(a, b)
    ma, sa, na = seed_stats(a)
    mb, sb, nb = seed_stats(b)
    note = ""
    if na == 0 or nb == 0:
        note = "missing: no finished seed on " + ("both sides" if na == nb == 0 else "side a" if na == 0 else "side b")
    elif na < 2 or nb < 2:
        note = "no spread: fewer than two seeds on a side"
    elif max(sa, sb) <= 1e-9 * max(1.0, abs(ma), abs(mb)):
        note = "no spread: every seed gave the same value (spread unmeasured)"
    elif iv.se <= 1e-12 * max(1.0, abs(ma), abs(mb)):
        note = "no spread: every seed's difference is the same (spread unmeasured)"
    v = stats.verdict(iv.low, iv.high, margin) if not note else UNDECIDED
    need = None
    if v == UNDECIDED and not note:
        ratio = (sb / sa) ** 2 if sa > 0 else 1.0
        need = stats.seeds_to_decide(iv.diff, iv.spread, margin, paired=paired, ratio=ratio)
    return {"metric": metric, "unit": "top-1 points", "n_a": na, "n_b": nb, "mean_a": ma, "std_a": sa,
            "mean_b": mb, "std_b": sb, "diff": iv.diff, "ci_low": iv.low, "ci_high": iv.high,
            "half_width": iv.half_width, "df": iv.df, "paired": paired,
            "test": "paired t (by seed)" if paired else "Welch t", "margin": margin, "verdict": v, "note": note,
            "seeds_to_decide": need}


def speed_sample(rows: pd.DataFrame, key: str) -> tuple[float, float, int]:
    """(centre, sd, N) of a configuration's timing repeats pooled over its seeds (see RULES)."""
    meds, sds, ns = [], [], []
    for m, iqr, n in zip(rows[key], rows[f"{key}_iqr"], rows[f"{key}_n"]):
        if not (isinstance(m, numbers.Real) and math.isfinite(m)):
            continue
        n = int(n) if isinstance(n, numbers.Real) and math.isfinite(n) and n >= 1 else 1
        meds.append(float(m))
        sds.append(float(iqr) / IQR_TO_SD if isinstance(iqr, numbers.Real) and math.isfinite(iqr) else math.nan)
        ns.append(n)
    total = sum(ns)
    if not total:
        return math.nan, math.nan, 0
    centre = sum(n * m for n, m in zip(ns, meds)) / total
    if total < 2 or any(math.isnan(s) for s, n in zip(sds, ns) if n > 1):
        return centre, math.nan, total
    ss = sum((n - 1) * s * s for s, n in zip(sds, ns) if n > 1) + sum(n * (m - centre) ** 2 for m, n in zip(meds, ns))
    return centre, math.sqrt(ss / (total - 1)), total


def compare_speed(frame: pd.DataFrame, cfg_a: str, cfg_b: str, key: str = "infer_samples_per_s",
                  rel_margin: float = SPEED_MARGIN) -> dict:
    """Speed of configuration a vs b (samples/s, higher is better) over timing repeats: Welch t interval, verdict."""
    ga = frame[(frame["config"] == cfg_a) & (frame["status"] == "ok")]
    gb = frame[(frame["config"] == cfg_b) & (frame["status"] == "ok")]
    ma, sa, na = speed_sample(ga, key)
    mb, sb, nb = speed_sample(gb, key)
    iv = stats.welch_from_stats(ma, sa, na, mb, sb, nb, se_factor=MEDIAN_SE_FACTOR)
    margin = rel_margin * abs(mb) if not math.isnan(mb) else math.nan
    on_a = {f"{d}/{t} thr" for d, t in zip(ga["speed_device"], ga["speed_threads"]) if d is not None}
    on_b = {f"{d}/{t} thr" for d, t in zip(gb["speed_device"], gb["speed_threads"]) if d is not None}
    note = ""
    if na == 0 or nb == 0:
        note = "missing: no finished cell with a speed measurement"
    elif on_a != on_b:
        note = "not comparable: measured on different devices or thread counts"
    elif math.isnan(iv.low):
        note = "no spread: timing spread unknown"
    elif iv.se == 0:
        note = "no spread: every repeat gave the same value"
    v = stats.verdict(iv.low, iv.high, margin) if not note else UNDECIDED
    need = None
    if v == UNDECIDED and not note:
        ratio = (sb / sa) ** 2 if sa > 0 else 1.0
        need = stats.seeds_to_decide(iv.diff, MEDIAN_SE_FACTOR * iv.spread, margin, paired=False, ratio=ratio)
    return {"metric": key, "unit": "samples/s", "n_a": na, "n_b": nb, "mean_a": ma, "std_a": sa, "mean_b": mb,
            "std_b": sb, "diff": iv.diff, "ratio": ma / mb if mb else math.nan, "ci_low": iv.low,
            "ci_high": iv.high, "half_width": iv.half_width, "df": iv.df, "paired": False,
            "test": "Welch t over timing repeats", "margin": margin, "verdict": v, "note": note,
            "seeds_to_decide": need, "same_machine": on_a == on_b}


def _decide(verdicts: list[str], *, against=(WORSE, EQUIVALENT)) -> str:
    if not verdicts:
        return UNDECIDED
    if any(v in against for v in verdicts):
        return NOT_HELD
    if all(v == BETTER for v in verdicts):
        return HELD
    return UNDECIDED


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


def _no_verdict(c: dict, why: str) -> dict:
    return dict(c, verdict=UNDECIDED, note=why, seeds_to_decide=None)


def _fmt(x, nd=2, sign=False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}"


def sentence(c: dict) -> str:
    """One comparison in words, with its interval: 'A vs B: +1.20 top-1 points, 95% CI [+0.8, +1.6] (...): better'."""
    nd = 2 if c["unit"] == "top-1 points" else 1
    head = f"{c['a']} vs {c['b']}: "
    if c["note"].startswith("missing"):
        return head + c["note"]
    body = f"{_fmt(c['diff'], nd, True)} {c['unit']}"
    if not math.isnan(c["ci_low"]):
        body += f", 95% CI [{_fmt(c['ci_low'], nd, True)}, {_fmt(c['ci_high'], nd, True)}]"
    body += f" ({c['test']}, n={c['n_a']}/{c['n_b']}, margin {_fmt(c['margin'], nd)})"
    tail = c["verdict"] + (f" ({c['note']})" if c["note"] else "")
    if c.get("seeds_to_decide"):
        tail += f"; about {c['seeds_to_decide']} {'seeds' if c['unit'] == 'top-1 points' else 'repeats'} per side " \
                f"would decide at this spread"
    elif c["verdict"] == UNDECIDED and not c["note"]:
        tail += "; no practical count decides at this spread"
    if c.get("deciding") is False:
        tail += ", not deciding"
    return head + body + ": " + tail


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


def claim_acmix_beats_single_path(frame: pd.DataFrame, margin: float = DEFAULT_MARGIN) -> Claim:
    key = "acmix_vs_single_path"
    statement = "ACmix beats both single-path variants (convolution, self-attention) at matched FLOPs."
    method = ("Per dataset and matched-FLOPs budget (cells matched to the same reference, the reference included; "
              "else one group): ACmix against the best convolution and the best self-attention configuration of the "
              "same budget (top-1, highest mean over seeds). Deciding: the release's ACmix (multigroup shift, "
              "learnable mixing) where present, else every ACmix configuration; other ACmix variants are shown, not "
              "deciding. Members must be within their MACs tolerance. Held when every deciding comparison is better. The "
              "best convolution against the best self-attention is shown too, not deciding.")
    s = summary_table(frame)
    rows, verdicts, notes, context = [], [], [], []
    budgets = _budgets(frame, s) if len(s) else {}
    if not budgets:
        return Claim(key, statement, UNDECIDED, "no matched-FLOPs group in the records", method)
    mt = match_table(frame)
    off_labels = set(mt[mt["within"] == False]["label"])  # noqa: E712
    families = {"acmix": ("acmix",), "conv": ("conv", "dconv"), "sa": ("sa",)}

    def guarded(a, b) -> dict:
        """compare_acc of two summary rows, with no verdict where either is untrained or off its budget."""
        c = compare_acc(frame, a["config"], b["config"], margin)
        if _at_chance(a, b):
            return _no_verdict(c, "at chance (not trained enough)")
        if off_labels & {a["label"], b["label"]}:
            return _no_verdict(c, "not matched (MACs outside the group's tolerance)")
        return c
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
                c = guarded(a, best)
                decides = a["config"] in deciding
                if decides:
                    verdicts.append(c["verdict"])
                rows.append(dict(c, claim=key, a=a["label"], b=best["label"], dataset=ds, budget=budget,
                                 acmix=a["label"], baseline=best["label"], deciding=decides,
                                 acmix_macs=a["macs"], baseline_macs=best["macs"]))
        # the two single paths against each other: context for the claim (the paper claims nothing here), so
        # that every pair of the three operators has its interval in claims.json
        conv, sa = (need[op].sort_values("top1_mean", ascending=False).iloc[0] for op in ("conv", "sa"))
        c = guarded(conv, sa)
        context.append(dict(c, claim=key, a=conv["label"], b=sa["label"], dataset=ds, budget=budget, deciding=False))
    status = _decide(verdicts)
    summary = "; ".join([sentence(r) for r in rows] + notes) or "no comparison possible"
    return Claim(key, statement, status, summary, method, rows, rows + context)


# ---------------------------------------------------------------------------- claim 2

def claim_gconv_faster(frame: pd.DataFrame, margin: float = DEFAULT_MARGIN) -> Claim:
    key = "gconv_faster"
    statement = "Group-convolution shifts are faster at inference than tensor shifts."
    method = ("Configurations equal except for the shift. Deciding pair: 'fixed' (group conv, one-hot kernels: the "
              "paper's like-for-like swap) vs 'tensor'; where 'fixed' is absent, every group-conv shift present. "
              "Inference samples/s over timing repeats (Welch t interval, margin "
              f"{SPEED_MARGIN:.0%} of the tensor shift's speed). Held when every deciding comparison is better "
              "(faster); not held when one is worse or equivalent. Other group-conv shifts are shown, not deciding.")
    st = shift_table(frame)
    rows, verdicts, notes = [], [], []
    if not len(st):
        return Claim(key, statement, UNDECIDED, "no configuration measured with more than one shift", method)
    for fam, g in st.groupby("family", sort=False):
        shifts = set(g["shift"])
        if "tensor" not in shifts:
            notes.append(f"{g['model'].iloc[0]}: no 'tensor' shift cell")
            continue
        deciding = ["fixed"] if "fixed" in shifts else [x for x in GCONV_SHIFTS if x in shifts]
        t_cfg = g[g["shift"] == "tensor"]["config"].iloc[0]
        for sh in GCONV_SHIFTS:
            if sh not in shifts:
                continue
            c = compare_speed(frame, g[g["shift"] == sh]["config"].iloc[0], t_cfg)
            decides = sh in deciding
            if decides:
                verdicts.append(c["verdict"])
            rows.append(dict(c, claim=key, a=f"{g['model'].iloc[0]} {sh}", b=f"{g['model'].iloc[0]} tensor",
                             dataset=g["dataset"].iloc[0], model=g["model"].iloc[0], deciding=decides))
    status = _decide(verdicts)
    return Claim(key, statement, status, "; ".join([sentence(r) for r in rows] + notes) or "no comparison possible",
                 method, rows, rows)


# ---------------------------------------------------------------------------- claim 3

def claim_learnable_multigroup(frame: pd.DataFrame, margin: float = DEFAULT_MARGIN) -> Claim:
    key = "learnable_multigroup"
    statement = "Learnable shift kernels add accuracy over fixed ones, and multiple groups add accuracy over one."
    method = ("Configurations equal except for the shift: 'learnable' vs 'fixed' (learnable kernels), 'multigroup' vs "
              "'learnable' (multiple groups). Top-1 over seeds with its 95% CI. Held when both steps are better; not "
              "held when either is worse or equivalent.")
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
            ra = s[s["config"] == g[g["shift"] == a]["config"].iloc[0]].iloc[0]
            rb = s[s["config"] == g[g["shift"] == b]["config"].iloc[0]].iloc[0]
            c = compare_acc(frame, ra["config"], rb["config"], margin)
            if _at_chance(ra, rb):
                c = _no_verdict(c, "at chance (not trained enough)")
            verdicts[name].append(c["verdict"])
            rows.append(dict(c, claim=key, step=name, dataset=ra["dataset"], a=ra["label"], b=rb["label"]))
    per = {k: _decide(v) for k, v in verdicts.items()}
    status = NOT_HELD if NOT_HELD in per.values() else HELD if all(v == HELD for v in per.values()) else UNDECIDED
    summary = "; ".join(f"{k}: {v}" for k, v in per.items()) + ". " + "; ".join(
        [sentence(r) for r in rows] + notes)
    return Claim(key, statement, status, summary, method, rows, rows)


# ---------------------------------------------------------------------------- claim 4

def claim_mixing_by_depth(records: list[dict]) -> Claim:
    key = "mixing_by_depth"
    statement = "Learned mixing leans to convolution early (|beta| > |alpha|) and to attention late (|alpha| > |beta|)."
    method = ("ACmix configurations with learnable mixing: log|alpha/beta| per layer. Early = the first third of the "
              "layer depths, late = the last third; mean and 95% t interval over all (seed, layer) values of each "
              "part. Held when the early CI is below 0 and the late CI above 0, both means beyond |log ratio| 0.05 "
              "(a 5% lean); not held when the early CI is above 0 or the late CI below 0; else undecided (e.g. weights "
              "still at their initial 1:1). Not a two-configuration comparison: not in claims.json's comparisons.")
    raw = mixing_raw(records)
    rows, verdicts = [], []
    if not len(raw):
        return Claim(key, statement, UNDECIDED,
                     "no record carries mixing_by_depth (needs ACmix cells with learnable mixing)", method)
    for cfg, g in raw.groupby("config", sort=True):
        depths = sorted(g["depth"].unique())
        if len(depths) < 2:
            verdicts.append("missing")
            rows.append({"label": g["label"].iloc[0], "dataset": g["dataset"].iloc[0], "verdict": "one depth only"})
            continue
        third = max(1, math.ceil(len(depths) / 3))
        me, el, eh = stats.mean_ci(g[g["depth"].isin(depths[:third])]["log_ratio"].tolist())
        ml, ll, lh = stats.mean_ci(g[g["depth"].isin(depths[-third:])]["log_ratio"].tolist())
        if math.isnan(el) or math.isnan(ll):
            v = "no spread"
        elif el > 0 or lh < 0:
            v = "against"
        elif eh < 0 and ll > 0 and me < -MIN_LOG_RATIO and ml > MIN_LOG_RATIO:
            v = "conv early, attention late"
        elif max(abs(me), abs(ml)) < MIN_LOG_RATIO:
            v = "no lean (|log ratio| < %.2f)" % MIN_LOG_RATIO
        else:
            v = UNDECIDED
        verdicts.append(v)
        rows.append({"label": g["label"].iloc[0], "dataset": g["dataset"].iloc[0],
                     "seeds": int(g["seed"].nunique()), "early_depths": f"{depths[0]}-{depths[third - 1]}",
                     "late_depths": f"{depths[-third]}-{depths[-1]}", "early_log_ratio": me, "early_ci_low": el,
                     "early_ci_high": eh, "late_log_ratio": ml, "late_ci_low": ll, "late_ci_high": lh, "verdict": v})
    status = (NOT_HELD if "against" in verdicts else
              HELD if all(v == "conv early, attention late" for v in verdicts) else UNDECIDED)
    parts = [f"{r['label']}: early log|a/b| {_fmt(r.get('early_log_ratio'), 3)}, 95% CI "
             f"[{_fmt(r.get('early_ci_low'), 3)}, {_fmt(r.get('early_ci_high'), 3)}]; late "
             f"{_fmt(r.get('late_log_ratio'), 3)}, 95% CI [{_fmt(r.get('late_ci_low'), 3)}, "
             f"{_fmt(r.get('late_ci_high'), 3)}] ({r['verdict']})" if "early_log_ratio" in r else
             f"{r['label']}: {r['verdict']}" for r in rows]
    return Claim(key, statement, status, "; ".join(parts), method, rows)


def check_claims(frame: pd.DataFrame, records: list[dict], margin: float = DEFAULT_MARGIN) -> list[Claim]:
    return [claim_acmix_beats_single_path(frame, margin), claim_gconv_faster(frame, margin),
            claim_learnable_multigroup(frame, margin), claim_mixing_by_depth(records)]


def claims_frame(claims: list[Claim]) -> pd.DataFrame:
    return pd.DataFrame([{"claim": c.key, "statement": c.statement, "status": c.status, "evidence": c.summary}
                         for c in claims])


COMPARISON_KEYS = ("claim", "metric", "unit", "a", "b", "dataset", "n_a", "n_b", "mean_a", "mean_b", "diff",
                   "ci_low", "ci_high", "half_width", "paired", "test", "df", "margin", "verdict", "note",
                   "seeds_to_decide", "deciding")


def claims_document(claims: list[Claim], margin: float) -> dict:
    """claims.json: {"margin", "level", "comparisons": [...], "claims": [...]} (one object per comparison and per claim)."""
    comps = []
    for c in claims:
        for r in c.comparisons:
            comps.append({k: r.get(k, True if k == "deciding" else None) for k in COMPARISON_KEYS})
    return {"margin": margin, "speed_margin_rel": SPEED_MARGIN, "level": stats.LEVEL, "comparisons": comps,
            "claims": [{"claim": c.key, "status": c.status, "statement": c.statement, "summary": c.summary}
                       for c in claims]}


def claims_json(claims: list[Claim]) -> str:
    """Every claim with its deciding rows (tables/claims.json)."""
    return json.dumps([{"claim": c.key, "statement": c.statement, "status": c.status, "summary": c.summary,
                        "method": c.method, "rows": c.rows} for c in claims], indent=1, default=_json_default)


def to_json(obj) -> str:
    return json.dumps(_clean(obj), indent=1, default=_json_default, allow_nan=False)


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        try:
            return _clean(x.item())
        except (AttributeError, ValueError):
            return x
    return x


def _json_default(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    try:
        return x.item()
    except AttributeError:
        return str(x)
