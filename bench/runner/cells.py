"""Expansion of a validated matrix config into cells, with stable ids.

A cell is one (backbone, operator, shift, mixing, dataset, seed). Shift and
mixing are ACmix's axes; conv and self-attention cells carry null there, so a
matrix with four shifts still has one conv cell per dataset and seed.

The id is readable and stable: `<model>[-<shift>-<mixing>]-<dataset>-s<seed>-<hash8>`,
where the hash covers every setting that can change the cell's results (cell
axes, model overrides, matched-FLOPs group, trainer, data, optimiser and
measurement settings). Same settings, same id; change the epochs and the id
changes, so a quick run never passes for a full one.
"""
from __future__ import annotations

import hashlib
import json

from .config import DATASETS

# settings that change how a cell runs but not what it measures
_OPERATIONAL = {"trainer": ("keep_checkpoints", "checkpoint_every_n_steps"), "data": ("num_workers",),
                "measure": ("jobs",)}


def _canon(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _hash8(obj) -> str:
    return hashlib.sha256(_canon(obj).encode()).hexdigest()[:8]


def _settings(cfg: dict) -> dict:
    out = {}
    for sec in ("trainer", "data", "optim", "measure", "model"):
        drop = _OPERATIONAL.get(sec, ())
        out[sec] = {k: v for k, v in cfg[sec].items() if k not in drop}
    return out


def _identity(backbone, op, shift, mixing, dataset, seed) -> dict:
    if op != "acmix":
        shift = mixing = None
    return {"model": f"{backbone}-{op}", "backbone": backbone, "op": op, "shift": shift,
            "mixing": mixing, "dataset": dataset, "seed": seed}


def _matches(sel: dict, ident: dict) -> bool:
    for k, v in sel.items():
        allowed = v if isinstance(v, list) else [v]
        if ident.get(k) not in allowed:
            return False
    return True


def model_overrides(cfg: dict, ident: dict) -> dict:
    """Keyword overrides for `create_model(ident['model'], **overrides)` (widths excluded: matching sets them)."""
    in_chans, size, num_classes = DATASETS[ident["dataset"]]
    if cfg["data"].get("image_size"):
        size = cfg["data"]["image_size"]
    ov = {"num_classes": num_classes, "in_chans": in_chans, "img_size": size}
    for k, v in cfg["model"].items():
        if v is not None and k != "widths":
            ov[k] = v
    if ident["op"] == "acmix":
        ov["shift"] = ident["shift"]
        ov["mixing"] = ident["mixing"]
    return ov


def input_size(cfg: dict, dataset: str) -> list[int]:
    in_chans, size, _ = DATASETS[dataset]
    size = cfg["data"].get("image_size") or cfg["model"].get("img_size") or size
    return [cfg["model"].get("in_chans") or in_chans, size, size]


def cell_id(ident: dict, group: dict | None, cfg: dict) -> str:
    key = {"cell": ident, "group": group, "settings": _settings(cfg)}
    parts = [ident["model"]]
    if ident["op"] == "acmix":
        parts += [ident["shift"], ident["mixing"]]
    parts += [ident["dataset"], f"s{ident['seed']}", _hash8(key)]
    return "-".join(parts)


def _group_for(cfg: dict, ident: dict) -> dict | None:
    for g in cfg["groups"]:
        if _matches(g["members"], ident):
            return g
    return None


def reference_identity(group: dict, ident: dict) -> dict:
    """The group's reference for this cell: the cell itself with the reference selector's values put in."""
    ref = dict(ident)
    for k, v in group["reference"].items():
        ref[k] = v[0] if isinstance(v, list) else v
    if ref["op"] == "acmix":
        ref["shift"] = ref["shift"] or "multigroup"
        ref["mixing"] = ref["mixing"] or "learnable"
    return _identity(ref["backbone"], ref["op"], ref["shift"], ref["mixing"], ref["dataset"], ref["seed"])


def expand(cfg: dict) -> list[dict]:
    """Deterministic list of cells: datasets, then seeds, then backbones, operators, shifts, mixings (config order)."""
    m = cfg["matrix"]
    cells, seen = [], set()
    for dataset in m["datasets"]:
        for seed in m["seeds"]:
            for backbone in m["backbones"]:
                for op in m["operators"]:
                    shifts = m["shifts"] if op == "acmix" else [None]
                    mixings = m["mixings"] if op == "acmix" else [None]
                    for shift in shifts:
                        for mixing in mixings:
                            ident = _identity(backbone, op, shift, mixing, dataset, seed)
                            if any(_matches(s, ident) for s in m["exclude"]):
                                continue
                            group = _group_for(cfg, ident)
                            cid = cell_id(ident, group, cfg)
                            if cid in seen:
                                continue
                            seen.add(cid)
                            cell = dict(ident)
                            cell["cell_id"] = cid
                            cell["group"] = group["name"] if group else None
                            cell["overrides"] = model_overrides(cfg, ident)
                            if group:
                                ref = reference_identity(group, ident)
                                cell["reference"] = ref
                                cell["reference_cell"] = cell_id(ref, _group_for(cfg, ref), cfg)
                                cell["tolerance"] = group["tolerance"]
                            else:
                                cell["reference"] = cell["reference_cell"] = cell["tolerance"] = None
                            cells.append(cell)
    return cells


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'i/n' -> (i, n), 0 <= i < n."""
    if text is None:
        return None
    try:
        i, n = (int(t) for t in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected i/n with integers, e.g. 0/4 (shards are numbered 0..n-1)") from None
    if n < 1 or not (0 <= i < n):
        raise ValueError(f"--shard {text!r}: need n >= 1 and 0 <= i < n (shards are numbered 0..n-1), e.g. 0/{max(n, 2)}")
    return i, n


def shard(cells: list[dict], spec: tuple[int, int] | None) -> list[dict]:
    """Round-robin split over the deterministic order: every cell in exactly one shard."""
    if spec is None:
        return cells
    i, n = spec
    return cells[i::n]


CSV_COLUMNS = ("cell_id", "model", "backbone", "op", "shift", "mixing", "dataset", "seed", "group", "reference_cell")


def cells_table(cells: list[dict]):
    import pandas as pd

    rows = [{k: c.get(k) for k in CSV_COLUMNS} for c in cells]
    return pd.DataFrame(rows, columns=list(CSV_COLUMNS))
