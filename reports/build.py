"""Build a report from a result directory: report.md, self-contained report.html, CSV tables, PNG+SVG plots.

The report is a list of blocks (heading, paragraph, table, figure) rendered twice,
to Markdown and to HTML, so both say the same thing.
"""
from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import claims as claims_mod
from . import compare as compare_mod
from . import plots, tables
from .records import ResultSet, check_margin, code_states, is_synthetic, load_results
from .stats import mean_ci

STATUS_MARK = {"held": "HELD", "not held": "NOT HELD", "undecided": "UNDECIDED"}


@dataclass
class Block:
    kind: str  # h1 h2 h3 p note table figure list
    content: object
    caption: str = ""


# ---------------------------------------------------------------------------- number formatting

def _isnan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt_count(x) -> str:
    """Exact count with thousands separators (MACs and params are integers)."""
    return "n/a" if _isnan(x) else f"{int(round(x)):,}"


def fmt_mean(m, s, n, nd=2) -> str:
    if _isnan(m):
        return "n/a"
    return f"{m:.{nd}f} ± {s:.{nd}f} (n={n})" if not _isnan(s) else f"{m:.{nd}f} (n={n}, no spread)"


def fmt_med(m, iqr, nd=1, seed_range=None) -> str:
    """Median with its timing IQR and, over seeds, the range of the per-seed medians."""
    if _isnan(m):
        return "n/a"
    parts = ([f"IQR {iqr:.{nd}f}"] if not _isnan(iqr) else []) + (
        [f"seeds range {seed_range:.{nd}f}"] if not _isnan(seed_range) else [])
    return f"{m:.{nd}f}" + (f" ({', '.join(parts)})" if parts else "")


def fmt_num(x, nd=2) -> str:
    if _isnan(x):
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int,)) or (isinstance(x, float) and float(x).is_integer() and abs(x) >= 1000):
        return f"{int(x):,}"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def display(df: pd.DataFrame, formats: dict | None = None) -> pd.DataFrame:
    """Every cell a string: NaN -> n/a, floats with 2 decimals unless formats says otherwise."""
    formats = formats or {}
    out = pd.DataFrame(index=df.index)
    for c in df.columns:
        f = formats.get(c, fmt_num)
        out[c] = [f(v) if not (v is None or (isinstance(v, float) and math.isnan(v))) else "n/a" for v in df[c]]
    return out


# ---------------------------------------------------------------------------- report content

def _summary_display(summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in summary.iterrows():
        rows.append({
            "dataset": r["dataset"], "configuration": r["label"], "group": r["group"] if isinstance(r["group"], str) else "",
            "params": fmt_count(r["params"]), "MACs": fmt_count(r["macs"]),
            "top-1 % (mean ± std, n)": fmt_mean(r["top1_mean"], r["top1_std"], r["top1_n"]),
            "top-5 % (mean ± std, n)": fmt_mean(r["top5_mean"], r["top5_std"], r["top5_n"]),
            "train samples/s": fmt_med(r["train_samples_per_s"], r["train_samples_per_s_iqr"],
                                       seed_range=r["train_samples_per_s_seed_range"]),
            "infer samples/s": fmt_med(r["infer_samples_per_s"], r["infer_samples_per_s_iqr"],
                                       seed_range=r["infer_samples_per_s_seed_range"]),
            "latency b1 ms": fmt_med(r["latency_b1_ms"], r["latency_b1_ms_iqr"], 2,
                                     seed_range=r["latency_b1_ms_seed_range"]),
            "peak mem MB": fmt_num(r["peak_mem_mb"], 1), "wall s (mean)": fmt_num(r["wall_s_mean"], 1),
            "speed on": r["speed_on"], "not ok": str(r["cells_not_ok"]),
        })
    return pd.DataFrame(rows)


def _stages_wide(summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in summary.iterrows():
        row = {"dataset": r["dataset"], "configuration": r["label"], "voice": r["count_voice"] or "n/a"}
        for s in ("stage1", "stage2", "stage2.attention", "stage2.conv", "other"):
            row[f"{s} params"] = fmt_count(r[f"params_{s}"])
            row[f"{s} MACs"] = fmt_count(r[f"macs_{s}"])
        row["total params"] = fmt_count(r["params"])
        row["total MACs"] = fmt_count(r["macs"])
        rows.append(row)
    return pd.DataFrame(rows)


def _cells_display(cells: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in cells.iterrows():
        rows.append({
            "cell_id": r["cell_id"], "status": r["status"] + (f": {r['reason']}" if isinstance(r["reason"], str) else ""),
            "seed": str(r["seed"]), "params": fmt_count(r["params"]), "MACs": fmt_count(r["macs"]),
            "stage1 MACs": fmt_count(r["macs_stage1"]), "stage2 MACs": fmt_count(r["macs_stage2"]),
            "top-1 %": fmt_num(r["top1"]), "top-5 %": fmt_num(r["top5"]),
            "train samples/s": fmt_med(r["train_samples_per_s"], r["train_samples_per_s_iqr"]),
            "infer samples/s": fmt_med(r["infer_samples_per_s"], r["infer_samples_per_s_iqr"]),
            "latency b1 ms": fmt_med(r["latency_b1_ms"], r["latency_b1_ms_iqr"], 2),
            "peak mem MB": fmt_num(r["peak_mem_mb"], 1), "wall s": fmt_num(r["wall_s"], 1),
        })
    return pd.DataFrame(rows)


def _env_lines(frame: pd.DataFrame) -> list[str]:
    out = []
    for k, name in (("torch", "torch"), ("speed_device", "device"), ("speed_threads", "threads"),
                    ("speed_jobs", "cells side by side (run --jobs)"), ("hostname", "host"),
                    ("git_commit", "commit"), ("platform", "platform")):
        vals = sorted({str(v) for v in frame[k].dropna()})
        out.append(f"{name}: {', '.join(vals) if vals else 'n/a'}")
    return out


def _missing_blocks(rs: ResultSet, frame: pd.DataFrame, claims) -> list[Block]:
    blocks = [Block("h2", "What is missing or broken")]
    items = []
    for f, why in rs.problems:
        items.append(f"unreadable record {f}: {why}")
    bad = frame[frame["status"] != "ok"]
    for _, r in bad.iterrows():
        items.append(f"cell {r['cell_id']} is {r['status']}" + (f": {r['reason']}" if isinstance(r["reason"], str) else ""))
    states = code_states(rs.records)
    if len(states) > 1:  # a rerun after a code change: the table mixes numbers from different code
        items.append(f"records come from {len(states)} code versions (commit, dirty = uncommitted changes): "
                     + "; ".join(f"{st}: {len(ids)} cell(s), e.g. {ids[0]}" for st, ids in sorted(states.items()))
                     + "; rerun into a fresh --out to compare like with like")
    miss = rs.missing()
    if miss:
        items.append(f"{len(miss)} planned cell(s) have no record yet: {', '.join(miss[:20])}"
                     + (" ..." if len(miss) > 20 else ""))
    elif rs.planned is None:
        items.append("cells never started cannot be listed: pass the matrix config (--matrix CONFIG) "
                     "or leave a plan.json next to cells/")
    # configurations whose seed count is below the most seeds any configuration has
    s = tables.summary_table(frame)
    if len(s):
        most = int(s["top1_n"].max())
        for _, r in s[s["top1_n"] < most].iterrows():
            items.append(f"{r['label']} ({r['dataset']}): {int(r['top1_n'])} finished seed(s) of {most}")
    for c in claims:
        if c.status == claims_mod.UNDECIDED:
            items.append(f"claim '{c.key}' cannot be decided yet: {c.summary}")
    blocks.append(Block("list", items or ["nothing: every record is readable and finished"]))
    return blocks


# columns of a claim's comparison table (those a claim's rows have), in this order
CLAIM_COLUMNS = ["dataset", "budget", "step", "a", "b", "deciding", "n_a", "n_b", "mean_a", "mean_b", "diff",
                 "ci_low", "ci_high", "half_width", "test", "margin", "verdict", "note", "seeds_to_decide",
                 "acmix_macs", "baseline_macs",
                 "seeds", "early_depths", "late_depths", "early_log_ratio", "early_ci_low", "early_ci_high",
                 "late_log_ratio", "late_ci_low", "late_ci_high", "label"]


def _claim_blocks(claims, margin) -> list[Block]:
    blocks = [Block("h2", "The paper's claims in this result set"),
              Block("p", "Each claim is marked held, not held or undecided from its comparisons' verdicts. Rules:"),
              Block("list", claims_mod.rules(margin))]
    blocks.append(Block("table", claims_mod.claims_frame(claims).assign(
        status=lambda d: d["status"].map(STATUS_MARK))[["statement", "status", "evidence"]]))
    for c in claims:
        blocks.append(Block("h3", f"{STATUS_MARK[c.status]}: {c.statement}"))
        blocks.append(Block("p", f"Method: {c.method}"))
        blocks.append(Block("p", f"Deciding numbers: {c.summary}"))
        if c.rows:
            t = c.table()
            t = t[[k for k in CLAIM_COLUMNS if k in t.columns]]
            blocks.append(Block("table", display(t, {"n_a": str, "n_b": str, "seeds": str,
                                                     "seeds_to_decide": lambda x: str(int(x)),
                                                     "acmix_macs": fmt_count, "baseline_macs": fmt_count})))
    return blocks


def _headline(frame: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: top-1 mean with its 95% CI over seeds, MACs, params, train/infer samples/s."""
    many = summary["dataset"].nunique() > 1 if len(summary) else False
    rows = []
    for _, r in summary.iterrows():
        vals = frame[(frame["config"] == r["config"]) & (frame["status"] == "ok")]["top1"].dropna().tolist()
        m, lo, hi = mean_ci(vals)
        top1 = ("n/a" if _isnan(m) else f"{m:.2f} [{lo:.2f}, {hi:.2f}] (n={len(vals)})" if not _isnan(lo)
                else f"{m:.2f} (n={len(vals)}, no CI)")
        row = {"dataset": r["dataset"]} if many else {}
        row.update({"model": r["label"], "top-1 % (mean [95% CI], n)": top1, "MACs": fmt_count(r["macs"]),
                    "params": fmt_count(r["params"]),
                    "train samples/s": fmt_num(r["train_samples_per_s"], 1),
                    "infer samples/s": fmt_num(r["infer_samples_per_s"], 1)})
        rows.append(row)
    return pd.DataFrame(rows)


def _claim_line(c) -> str:
    """A claim's verdict in one line: status, statement, the deciding comparisons with their intervals."""
    parts = []
    for r in c.comparisons:
        if r.get("deciding") is False:
            continue
        nd = 2 if r["unit"] == "top-1 points" else 1
        if r["note"].startswith("missing"):
            parts.append(f"{r['a']} vs {r['b']}: missing")
            continue
        ci = (f" [{r['ci_low']:+.{nd}f}, {r['ci_high']:+.{nd}f}]" if not _isnan(r["ci_low"]) else "")
        parts.append(f"{r['a']} vs {r['b']} {r['diff']:+.{nd}f}{ci} {r['unit']}: {r['verdict']}"
                     + (f", ~{r['seeds_to_decide']} seeds would decide" if r.get("seeds_to_decide")
                        and r["unit"] == "top-1 points" else ""))
    if not c.comparisons and c.rows and "early_log_ratio" in c.rows[0]:  # mixing by depth: one config, then counts
        r = c.rows[0]
        parts = [f"{r['label']}: early log|alpha/beta| {r['early_log_ratio']:+.3f} [{r['early_ci_low']:+.3f}, "
                 f"{r['early_ci_high']:+.3f}], late {r['late_log_ratio']:+.3f} [{r['late_ci_low']:+.3f}, "
                 f"{r['late_ci_high']:+.3f}]: {r['verdict']}"]
        rest: dict = {}
        for x in c.rows[1:]:
            rest[x["verdict"]] = rest.get(x["verdict"], 0) + 1
        if rest:
            parts.append(f"{len(c.rows) - 1} more configuration(s): "
                         + ", ".join(f"{v} ({k})" for v, k in sorted(rest.items())))
    detail = "; ".join(parts) if parts else c.summary
    return f"{STATUS_MARK[c.status]}: {c.statement} ({detail})"


class Report:
    """Tables, figures and blocks of one report; write() puts them on disk."""

    def __init__(self, rs: ResultSet, base: ResultSet | None = None, margin: float | None = None):
        self.rs, self.base = rs, base
        # equivalence margin: --margin, else the matrix config's report.margin (plan.json or --matrix), else 0.5
        if margin is not None:
            self.margin = check_margin(margin, "--margin")
        elif rs.report_config.get("margin") is not None:
            self.margin = check_margin(rs.report_config["margin"], "the config's report.margin")
        else:
            self.margin = claims_mod.DEFAULT_MARGIN
        self.frame = rs.frame
        self.summary = tables.summary_table(self.frame)
        self.csv: dict[str, pd.DataFrame] = {
            "cells": tables.cells_table(self.frame),
            "summary": self.summary.drop(columns=["config"]),
            "stages": tables.stages_table(self.frame),
            "voices": tables.voices_table(rs.records),
            "match": tables.match_table(self.frame),
            "mixing": tables.mixing_table(rs.records).drop(columns=["config"]),
            "shifts": tables.shift_table(self.frame).drop(columns=["family", "config"], errors="ignore"),
        }
        self.claims = claims_mod.check_claims(self.frame, rs.records, self.margin)
        self.csv["claims"] = claims_mod.claims_frame(self.claims)
        self.figures = {
            "accuracy_vs_macs": plots.accuracy_vs_macs(self.summary),
            "throughput_vs_macs": plots.throughput_vs_macs(self.summary),
            "stage_macs": plots.stage_macs(self.summary),
            "shifts": plots.shifts(tables.shift_table(self.frame)),
            "mixing_by_depth": plots.mixing(tables.mixing_table(rs.records)),
        }
        if base is not None:
            bf = base.frame
            self.csv["compare_cells"] = compare_mod.cell_deltas(self.frame, bf)
            self.csv["compare_configs"] = compare_mod.config_deltas(self.frame, bf)
        self.blocks = self._blocks()

    def _fig(self, name, caption, why_missing) -> Block:
        if self.figures.get(name) is None:
            return Block("note", f"No plot '{name}': {why_missing}")
        return Block("figure", name, caption)

    def _blocks(self) -> list[Block]:
        rs, f = self.rs, self.frame
        counts = f["status"].value_counts().to_dict()
        b = [Block("h1", f"acmix-bench report: {rs.root.name}")]
        if is_synthetic(rs.records):
            b.append(Block("note", "SYNTHETIC TEST FIXTURE: these records were generated for tests, not measured. "
                                   "No number below is a measurement."))
        b.append(Block("h2", "The answer"))
        b.append(Block("table", _headline(f, self.summary)))
        b.append(Block("p", "Top-1: mean over finished seeds with its 95% Student t interval; MACs per image (exact "
                            "count); train and inference throughput: median samples/s over timing repeats and seeds. "
                            f"Claims (95% CI of each difference; equivalence margin {self.margin:g} top-1 points; "
                            "rules and per-comparison detail below):"))
        b.append(Block("list", [_claim_line(c) for c in self.claims]))
        b.append(Block("h2", "Methods and environment"))
        b.append(Block("p", f"Result directory: {rs.root}. {len(rs.records)} records ("
                            + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
                            + f"), {len(rs.problems)} unreadable."))
        b.append(Block("list", _env_lines(f)))
        b.append(Block("p", "Units: every count is in MACs (multiply-accumulates) per image at the record's input size; "
                            "FLOPs would be 2 x MACs and are not shown. Counts come from the counter voice named in each "
                            "table (the formula voice of docs/operators.md where present, else fvcore). Accuracy: mean ± sample "
                            "std over seeds, n = finished seeds. Speed: median over timing repeats with its "
                            "interquartile range (IQR); over seeds the median of the per-seed medians, the largest IQR and the range "
                            "of the per-seed medians (on a busy machine that range is the larger noise). "
                            "Speed numbers compare only within one device and thread count."))
        b += _missing_blocks(rs, f, self.claims)
        b += _claim_blocks(self.claims, self.margin)
        b.append(Block("h2", "Accuracy, cost and speed per configuration"))
        b.append(Block("table", _summary_display(self.summary)))
        b.append(self._fig("accuracy_vs_macs", "Top-1 vs MACs, one marker per operator family; bars: seed std.",
                           "no finished cell with accuracy and MACs"))
        b.append(self._fig("throughput_vs_macs", "Throughput vs MACs; bars: timing IQR.", "no speed measurements"))
        b.append(Block("h2", "Params and MACs per stage"))
        b.append(Block("p", "Stage I: the 1x1 projections; Stage II: the aggregation (ACmix: its attention and "
                            "convolution paths); other: stem, downsampling, head. stage2 includes stage2.attention "
                            "and stage2.conv; total = stage1 + stage2 + other."))
        b.append(Block("table", _stages_wide(self.summary)))
        b.append(self._fig("stage_macs", "MACs per stage per configuration.", "no counts in the records"))
        vt = self.csv["voices"]
        if len(vt):
            b.append(Block("h3", "Counters cross-checked: total MACs per voice"))
            b.append(Block("p", "Each counter voice's totals; macs_vs_formula = voice MACs / formula MACs. fvcore and "
                                "similar counters miss ops they have no handle for (docs/operators.md: the sliding-window "
                                "attention path), so a ratio below 1 is the part they do not see."))
            b.append(Block("table", display(vt, {"params": fmt_count, "macs": fmt_count, "stage2_macs": fmt_count,
                                                 "macs_vs_formula": lambda x: f"{x:.3f}"})))
        b.append(Block("h2", "Matched-FLOPs groups: achieved MACs vs target"))
        mt = self.csv["match"]
        if len(mt):
            b.append(Block("table", display(mt, {"target_macs": fmt_count, "macs": fmt_count,
                                                 "rel_error": lambda x: f"{x * 100:+.3f}%",
                                                 "tolerance": lambda x: f"{x * 100:.2f}%"})))
        else:
            b.append(Block("note", "No cell belongs to a matched-FLOPs group."))
        b.append(Block("h2", "Shift implementations side by side"))
        st = self.csv["shifts"]
        if len(st):
            b.append(Block("table", display(st, {"top1_n": str, "params": fmt_count, "macs": fmt_count})))
        b.append(self._fig("shifts", "Shift implementations: inference speed (IQR) and top-1 (seed std).",
                           "no configuration measured with more than one shift implementation"))
        b.append(Block("h2", "Learned mixing by depth (ACmix)"))
        mx = self.csv["mixing"]
        if len(mx):
            b.append(Block("table", display(mx, {"n": str, "depth": str}, )))
        b.append(self._fig("mixing_by_depth", "|alpha|, |beta| and log|alpha/beta| by layer depth; bars: seed std.",
                           "no record carries mixing weights (ACmix cells with learnable mixing)"))
        if self.base is not None:
            b += self._compare_blocks()
        b.append(Block("h2", "Every cell"))
        b.append(Block("table", _cells_display(self.csv["cells"])))
        return b

    def _compare_blocks(self) -> list[Block]:
        bf = self.base.frame
        pairs, only_this, only_base = compare_mod.pair_cells(self.frame, bf)
        b = [Block("h2", f"Comparison with {self.base.root}"),
             Block("p", "Delta = this result set minus the --compare set. Cells pair by cell_id, else by "
                        "configuration and seed. Flags:"), Block("list", compare_mod.RULES)]
        env = compare_mod.env_differences(self.frame, bf)
        b.append(Block("list", [f"{len(pairs)} matching cells; {len(only_this)} only here; {len(only_base)} only in "
                                f"the --compare set"] + [f"environment differs: {e}" for e in env]
                       + (["speed deltas across different machines or thread counts are not like for like"]
                          if any(e.startswith(("speed_device", "speed_threads", "speed_jobs", "hostname")) for e in env) else [])))
        base_claims = {c.key: c for c in claims_mod.check_claims(bf, self.base.records, self.margin)}
        b.append(Block("h3", "Claims in both sets"))
        b.append(Block("table", pd.DataFrame([{
            "claim": c.statement, "this": STATUS_MARK[c.status], "base": STATUS_MARK[base_claims[c.key].status],
            "changed": "yes" if c.status != base_claims[c.key].status else ""} for c in self.claims])))
        cc = self.csv["compare_configs"]
        if len(cc):
            b.append(Block("h3", "Per configuration (seeds pooled)"))
            b.append(Block("table", display(cc, {"top1_this_n": str, "top1_base_n": str})))
        cd = self.csv["compare_cells"]
        if len(cd):
            flagged = cd[cd["flags"] != ""]
            b.append(Block("h3", f"Per cell: {len(flagged)} of {len(cd)} with a change beyond noise"))
            cols = ["cell_id", "status", "top1_this", "top1_base", "top1_delta", "top1_noise",
                    "infer_samples_per_s_this", "infer_samples_per_s_base", "infer_samples_per_s_rel",
                    "infer_samples_per_s_noise", "train_samples_per_s_rel", "latency_b1_ms_rel", "macs_delta", "flags"]
            b.append(Block("table", display(cd[cols], {
                "infer_samples_per_s_rel": lambda x: f"{x * 100:+.1f}%", "train_samples_per_s_rel": lambda x: f"{x * 100:+.1f}%",
                "latency_b1_ms_rel": lambda x: f"{x * 100:+.1f}%", "macs_delta": fmt_count})))
        if only_this or only_base:
            b.append(Block("list", [f"only here: {c}" for c in only_this] + [f"only in --compare: {c}" for c in only_base]))
        return b

    # ------------------------------------------------------------------------ output

    def write(self, out: Path) -> dict[str, Path]:
        out = Path(out)
        (out / "tables").mkdir(parents=True, exist_ok=True)
        (out / "plots").mkdir(parents=True, exist_ok=True)
        written = {}
        for name, df in self.csv.items():
            p = out / "tables" / f"{name}.csv"
            df.to_csv(p, index=False)
            written[f"tables/{name}.csv"] = p
        (out / "tables" / "claims.json").write_text(claims_mod.claims_json(self.claims))
        (out / "claims.json").write_text(claims_mod.to_json(claims_mod.claims_document(self.claims, self.margin)) + "\n")
        written["claims.json"] = out / "claims.json"
        pngs = {}
        for name, fig in self.figures.items():
            if fig is None:
                continue
            for ext in ("png", "svg"):
                p = out / "plots" / f"{name}.{ext}"
                fig.savefig(p, dpi=110 if ext == "png" else None, metadata={"Date": None} if ext == "svg" else None)
                written[f"plots/{name}.{ext}"] = p
            pngs[name] = (out / "plots" / f"{name}.png").read_bytes()
            plots.plt.close(fig)
        (out / "report.md").write_text(render_markdown(self.blocks))
        (out / "report.html").write_text(render_html(self.blocks, pngs))
        written["report.md"], written["report.html"] = out / "report.md", out / "report.html"
        return written


def build_report(results_dir, out_dir=None, compare=None, planned=None, margin=None,
                 report_config=None) -> tuple[dict[str, Path], Report]:
    """Read records, write the report; returns ({relative name: path} of what was written, the Report).
    planned: the cells the matrix planned (see load_results), to list those with no record.
    margin: equivalence margin in top-1 points (None: report_config's, else the plan's report.margin, else 0.5)."""
    rs = load_results(results_dir, planned, report_config)
    base = load_results(compare) if compare is not None else None
    out = Path(out_dir) if out_dir is not None else rs.root / "report"
    rep = Report(rs, base, margin)
    return rep.write(out), rep


# ---------------------------------------------------------------------------- renderers

def _md_cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def md_table(df: pd.DataFrame) -> str:
    if not len(df):
        return "_(empty)_\n"
    d = display(df) if any(df[c].dtype != object for c in df.columns) else df
    lines = ["| " + " | ".join(_md_cell(c) for c in d.columns) + " |", "|" + "---|" * len(d.columns)]
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in d.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def render_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + str(b.content) + "\n")
        elif b.kind == "p":
            out.append(str(b.content) + "\n")
        elif b.kind == "note":
            out.append(f"> **Note:** {b.content}\n")
        elif b.kind == "list":
            out.append("\n".join(f"- {x}" for x in b.content) + "\n")
        elif b.kind == "table":
            out.append(md_table(b.content))
        elif b.kind == "figure":
            out.append(f"![{b.caption}](plots/{b.content}.png)\n\n_{b.caption}_ (also plots/{b.content}.svg)\n")
    return "\n".join(out)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1400px;color:#222;padding:0 1em}
table{border-collapse:collapse;font-size:12px;margin:0.6em 0 1.2em;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f0f0f0}tr:nth-child(even) td{background:#fafafa}
.note{background:#fff6d5;border-left:4px solid #e0b000;padding:0.5em 1em}
figure{margin:1em 0}img{max-width:100%;border:1px solid #ddd}figcaption{font-size:12px;color:#555}
.held{color:#0a7d2c;font-weight:bold}.not-held{color:#b00020;font-weight:bold}.ned{color:#8a6d00;font-weight:bold}
"""


def _html_cell(x) -> str:
    s = html.escape(str(x))
    cls = {"HELD": "held", "NOT HELD": "not-held", "UNDECIDED": "ned"}.get(str(x))
    return f'<span class="{cls}">{s}</span>' if cls else s


def html_table(df: pd.DataFrame) -> str:
    if not len(df):
        return "<p><em>(empty)</em></p>"
    d = display(df) if any(df[c].dtype != object for c in df.columns) else df
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in d.columns)
    body = "".join("<tr>" + "".join(f"<td>{_html_cell(v)}</td>" for v in row) + "</tr>"
                   for row in d.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(blocks: list[Block], pngs: dict[str, bytes]) -> str:
    title = next((str(b.content) for b in blocks if b.kind == "h1"), "acmix-bench report")
    parts = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            parts.append(f"<{b.kind}>{html.escape(str(b.content))}</{b.kind}>")
        elif b.kind == "p":
            parts.append(f"<p>{html.escape(str(b.content))}</p>")
        elif b.kind == "note":
            parts.append(f'<p class="note">{html.escape(str(b.content))}</p>')
        elif b.kind == "list":
            parts.append("<ul>" + "".join(f"<li>{html.escape(str(x))}</li>" for x in b.content) + "</ul>")
        elif b.kind == "table":
            parts.append(html_table(b.content))
        elif b.kind == "figure":
            data = base64.b64encode(pngs[b.content]).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(b.caption)}" data-plot="{html.escape(b.content)}" '
                         f'src="data:image/png;base64,{data}"><figcaption>{html.escape(b.caption)}</figcaption></figure>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><link rel=\"icon\" href=\"data:,\"><style>{CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
