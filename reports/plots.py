"""Report figures (matplotlib, Agg). Each function takes tables, returns a Figure or None when
there is nothing to draw. Counts are shown in MACs, with the axis unit written out."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

OP_STYLE = {  # the paper's figures: one marker (and colour) per operator family
    "conv": {"marker": "s", "color": "#1f77b4", "name": "convolution"},
    "dconv": {"marker": "D", "color": "#17becf", "name": "convolution (decomposed)"},
    "sa": {"marker": "^", "color": "#2ca02c", "name": "self-attention"},
    "acmix": {"marker": "*", "color": "#d62728", "name": "ACmix"},
    "pairwise": {"marker": "v", "color": "#8c564b", "name": "SAN pairwise attention"},
    "patchwise": {"marker": "<", "color": "#e377c2", "name": "SAN patchwise attention"},
}
FAMILY_LINES = {"resnet": "-", "san": "--", "pvt": ":", "swin": "-."}
SHIFT_COLORS = {"tensor": "#7f7f7f", "fixed": "#1f77b4", "learnable": "#ff7f0e", "multigroup": "#d62728"}


def _style(op):
    return OP_STYLE.get(op, {"marker": "o", "color": "#9467bd", "name": str(op)})


def _macs_unit(values) -> tuple[float, str]:
    m = np.nanmax(np.asarray(values, dtype=float)) if len(values) else 0
    if m >= 1e9:
        return 1e9, "GMACs"
    if m >= 1e6:
        return 1e6, "MMACs"
    return 1e3, "KMACs"


def family_of(backbone) -> str:
    """resnet26 -> resnet, swin_t -> swin, pvt_s -> pvt, san10 -> san."""
    head = str(backbone).split("_")[0]
    return head.rstrip("0123456789") or head


def _zero(x):
    return 0.0 if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def accuracy_vs_macs(summary: pd.DataFrame):
    s = summary[summary["top1_n"] > 0].dropna(subset=["macs"]) if len(summary) else summary
    if not len(s):
        return None
    datasets = sorted(s["dataset"].astype(str).unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.4 * len(datasets), 4.6), squeeze=False)
    scale, unit = _macs_unit(s["macs"])
    for ax, ds in zip(axes[0], datasets):
        d = s[s["dataset"].astype(str) == ds]
        seen = set()
        # one line per family variant (op, shift, mixing) across backbones, as in the paper's figure
        fam = d["shift"].fillna("").astype(str) + "/" + d["mixing"].fillna("").astype(str)
        for (op, _), g in d.groupby(["op", fam], sort=True, dropna=False):
            g = g.sort_values("macs")
            st = _style(op)
            lbl = st["name"] if op not in seen else None
            seen.add(op)
            ax.errorbar(g["macs"] / scale, g["top1_mean"], yerr=[_zero(x) for x in g["top1_std"]],
                        marker=st["marker"], color=st["color"], ms=11 if op == "acmix" else 8, capsize=3,
                        linestyle="-" if len(g) > 1 else "none", lw=1.2, elinewidth=1.2, label=lbl, alpha=0.9)
            for _, r in g.iterrows():
                tag = r["backbone"] + (f" {r['shift']}" if isinstance(r["shift"], str) else "")
                ax.annotate(f"{tag} (n={r['top1_n']})", (r["macs"] / scale, r["top1_mean"]), fontsize=7,
                            xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel(f"MACs per image ({unit})")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{ds}: accuracy vs MACs (bars: seed std)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def throughput_vs_macs(summary: pd.DataFrame):
    s = summary.dropna(subset=["macs"]) if len(summary) else summary
    keys = [k for k in ("infer_samples_per_s", "train_samples_per_s") if len(s) and s[k].notna().any()]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(6.4 * len(keys), 4.6), squeeze=False)
    scale, unit = _macs_unit(s["macs"])
    for ax, k in zip(axes[0], keys):
        seen = set()
        d = s.dropna(subset=[k])
        # one line per (family, operator variant) across the family's depths, like the paper's speed table
        variant = (d["backbone"].map(family_of) + "/" + d["op"].astype(str) + "/" + d["shift"].fillna("").astype(str)
                   + "/" + d["mixing"].fillna("").astype(str))
        for v, g in d.groupby(variant, sort=True):
            g = g.sort_values("macs")
            fam, op = v.split("/")[:2]
            st = _style(op)
            ax.errorbar(g["macs"] / scale, g[k], yerr=[_zero(x) / 2 for x in g[f"{k}_iqr"]], marker=st["marker"],
                        color=st["color"], ms=10 if op == "acmix" else 7, capsize=3,
                        linestyle=FAMILY_LINES.get(fam, "-") if len(g) > 1 else "none", lw=1.0,
                        label=st["name"] if op not in seen else None)
            seen.add(op)
            for _, r in g.iterrows():
                tag = r["backbone"] + (f" {r['shift']}" if isinstance(r["shift"], str) else "")
                ax.annotate(tag, (r["macs"] / scale, r[k]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel(f"MACs per image ({unit})")
        ax.set_ylabel("samples/s")
        fams = sorted({family_of(b) for b in d["backbone"]})
        lines = ", ".join(f"{f} {FAMILY_LINES.get(f, '-')}" for f in fams)
        ax.set_title(("inference" if k.startswith("infer") else "training")
                     + f" throughput vs MACs (bars: IQR; lines by family: {lines})", fontsize=9)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    devs = ", ".join(sorted({str(x) for x in s["speed_on"] if x}))
    fig.suptitle(f"measured on: {devs}", fontsize=8)
    fig.tight_layout()
    return fig


def stage_macs(summary: pd.DataFrame):
    s = summary.dropna(subset=["macs"]) if len(summary) else summary
    if not len(s):
        return None
    parts = []
    for _, r in s.iterrows():
        att, conv = _zero(r["macs_stage2.attention"]), _zero(r["macs_stage2.conv"])
        st2 = _zero(r["macs_stage2"])
        parts.append({"label": f"{r['label']} ({r['dataset']})", "stage1": _zero(r["macs_stage1"]),
                      "stage2.attention": att, "stage2.conv": conv, "stage2 (rest)": max(0.0, st2 - att - conv),
                      "other": _zero(r["macs_other"]), "voice": r["count_voice"]})
    p = pd.DataFrame(parts)
    scale, unit = _macs_unit(s["macs"])
    cols = ["stage1", "stage2.attention", "stage2.conv", "stage2 (rest)", "other"]
    colors = ["#4c72b0", "#c44e52", "#dd8452", "#8172b3", "#bbbbbb"]
    fig, ax = plt.subplots(figsize=(10.5, 0.45 * len(p) + 1.6))
    left = np.zeros(len(p))
    for c, col in zip(cols, colors):
        v = p[c].to_numpy() / scale
        ax.barh(p["label"], v, left=left, color=col, label=c)
        left += v
    ax.set_xlabel(f"MACs per image ({unit}); voice: {', '.join(sorted(set(map(str, p['voice']))))}")
    ax.set_title("MACs per stage (Stage I: 1x1 projections; Stage II: aggregation)")
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return fig


def shifts(shift_tab: pd.DataFrame):
    if not len(shift_tab):
        return None
    fams = list(dict.fromkeys(shift_tab["family"]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / 4
    order = ["tensor", "fixed", "learnable", "multigroup"]
    for fi, fam in enumerate(fams):
        g = shift_tab[shift_tab["family"] == fam]
        for _, r in g.iterrows():
            k = order.index(r["shift"]) if r["shift"] in order else 0
            x = fi + (k - 1.5) * width
            lbl = r["shift"] if fi == 0 else None
            axes[0].bar(x, _zero(r["infer_samples_per_s"]), width, yerr=_zero(r["infer_samples_per_s_iqr"]) / 2,
                        color=SHIFT_COLORS.get(r["shift"]), capsize=3, label=lbl)
            axes[1].bar(x, _zero(r["top1_mean"]), width, yerr=_zero(r["top1_std"]),
                        color=SHIFT_COLORS.get(r["shift"]), capsize=3, label=lbl)
            axes[1].annotate(f"n={r['top1_n']}", (x, _zero(r["top1_mean"])), fontsize=7, ha="center",
                             xytext=(0, 3), textcoords="offset points")
    names = [f"{shift_tab[shift_tab['family'] == f]['model'].iloc[0]}\n{shift_tab[shift_tab['family'] == f]['dataset'].iloc[0]}"
             for f in fams]
    for ax in axes:
        ax.set_xticks(range(len(fams)), names, fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, title="shift")
    axes[0].set_ylabel("inference samples/s")
    axes[0].set_title("shift implementations: inference speed (bars: IQR)")
    axes[1].set_ylabel("top-1 accuracy (%)")
    axes[1].set_title("shift implementations: accuracy (bars: seed std)")
    lo = shift_tab["top1_mean"].min() - 3 * (shift_tab["top1_std"].max() if shift_tab["top1_std"].notna().any() else 1)
    if math.isfinite(lo):
        axes[1].set_ylim(bottom=max(0.0, lo))
    fig.tight_layout()
    return fig


FAMILY_NAMES = {"resnet": "ResNet-ACmix", "san": "SAN-ACmix", "pvt": "PVT-ACmix", "swin": "Swin-ACmix"}


def mixing(mix: pd.DataFrame):
    """|alpha|, |beta|, log|alpha/beta| by layer depth: one row of three panels per backbone family (depths of
    different families are different layers), one series per configuration within it."""
    if not len(mix):
        return None
    mix = mix.copy()
    mix["family"] = mix["family"].fillna("?").astype(str) if "family" in mix else "?"
    order = ["resnet", "san", "pvt", "swin"]
    families = sorted(mix["family"].unique(), key=lambda f: (order.index(f) if f in order else len(order), f))
    fig, axes = plt.subplots(len(families), 3, figsize=(15, 3.6 * len(families) + 0.6), squeeze=False)
    for row, fam in zip(axes, families):
        for i, (label, g) in enumerate(mix[mix["family"] == fam].groupby("label", sort=True)):
            g = g.sort_values("depth")
            for ax, q in zip(row, ("abs_alpha", "abs_beta", "log_ratio")):
                ax.errorbar(g["depth"], g[f"{q}_mean"], yerr=[_zero(x) for x in g[f"{q}_std"]], marker="o", ms=4,
                            capsize=2, label=f"{label} (n={int(g['n'].max())})", color=plt.cm.tab10(i % 10))
        name = FAMILY_NAMES.get(fam, fam)
        for ax, t in zip(row, ("|alpha| (attention weight)", "|beta| (convolution weight)",
                               "log|alpha/beta| (>0: attention, <0: convolution)")):
            ax.set_xlabel("layer depth (ACmix layer index)")
            ax.set_title(f"{name}: {t}", fontsize=10)
            ax.grid(alpha=0.3)
        row[2].axhline(0, color="k", lw=0.8)
        row[0].legend(fontsize=7)
    fig.suptitle("ACmix learned mixing by depth, per backbone family (bars: seed std)", fontsize=10)
    fig.tight_layout()
    return fig
