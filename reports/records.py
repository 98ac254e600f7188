"""Reading a result directory: OUT/cells/*.json records into a flat pandas table.

Reports read records only, never live models. A record that cannot be read or
fails validation is not fatal: it is listed as a problem (file and one-line
reason) and the report is built from the rest. A directory with no usable
record at all is an error with a message that says what to do.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .schema import SCHEMA, STATUSES, validate_record

STAGES = ("stage1", "stage2", "stage2.attention", "stage2.conv", "other", "total")
SPEEDS = ("infer_samples_per_s", "train_samples_per_s", "latency_b1_ms")
# Cell fields that identify a configuration; a configuration is a cell without its seed.
CONFIG_KEYS = ("dataset", "backbone", "model", "op", "shift", "mixing", "group", "overrides")
NUM_CLASSES = {"fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "imagenet": 1000, "synthetic": 10}
# Names of files the runner may leave next to cells/ listing the planned cells (any one is used).
PLAN_FILES = ("plan.json", "matrix.json", "cells.json")


@dataclass
class ResultSet:
    """Everything a report needs from one result directory."""

    root: Path
    records: list[dict]
    problems: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    planned: list[dict] | None = None  # cells the matrix planned (cell_id and/or identity), when known
    report_config: dict = field(default_factory=dict)  # the matrix config's `report` section, when known

    @property
    def frame(self) -> pd.DataFrame:
        return records_frame(self.records)

    def missing(self) -> list[str]:
        """Planned cells with no record at all (matched by cell_id, else by identity: backbone, op, shift,
        mixing, dataset, seed, since ids also hash run settings that a quick-run override changes)."""
        if self.planned is None:
            return []
        ids = {r["cell_id"] for r in self.records}
        idents = {identity(r["cell"]) for r in self.records}
        out = []
        for p in self.planned:
            if p.get("cell_id") in ids:
                continue
            if all(k in p for k in IDENTITY) and identity(p) in idents:
                continue
            out.append(p.get("cell_id") or "-".join(str(p.get(k)) for k in IDENTITY))
        return out


IDENTITY = ("backbone", "op", "shift", "mixing", "dataset", "seed")


def identity(cell: dict) -> tuple:
    return tuple(str(cell.get(k)) for k in IDENTITY)


def check_record(rec) -> None:
    """Raise ValueError naming the first thing a report cannot use in this record."""
    if not isinstance(rec, dict):
        raise ValueError(f"record is a {type(rec).__name__}, expected a JSON object")
    if rec.get("schema") != SCHEMA:
        raise ValueError(f"schema is {rec.get('schema')!r}, expected {SCHEMA!r} (written by another version?)")
    for key in ("cell_id", "status", "cell"):
        if key not in rec:
            raise ValueError(f"missing key {key!r}")
    if rec["status"] not in STATUSES:
        raise ValueError(f"status {rec['status']!r} is not one of {', '.join(STATUSES)}")
    cell = rec["cell"]
    if not isinstance(cell, dict):
        raise ValueError("'cell' is not an object")
    for key in ("model", "op", "dataset", "seed"):
        if key not in cell:
            raise ValueError(f"missing key 'cell.{key}'")
    if rec["status"] == "ok":
        m = rec.get("metrics")
        if not isinstance(m, dict) or not isinstance(m.get("top1"), (int, float)):
            raise ValueError("status is 'ok' but metrics.top1 is missing")
    for k in ("top1", "top5", "val_top1"):
        v = (rec.get("metrics") or {}).get(k)
        if isinstance(v, (int, float)) and math.isfinite(v) and not 0.0 <= v <= 1.0:
            raise ValueError(f"metrics.{k} = {v} is outside [0, 1]: records hold accuracy as a fraction "
                             f"(torchmetrics), reports show percent")
    try:
        validate_record(rec)
    except (TypeError, KeyError) as e:  # a field of the wrong shape deeper down
        raise ValueError(f"{type(e).__name__}: {e}") from None


def _read_plan(root: Path) -> tuple[list[dict] | None, dict]:
    """(planned cells, the config's `report` section) from a plan file next to cells/, else (None, {})."""
    for name in PLAN_FILES:
        p = root / name
        if p.is_file():
            try:
                data = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"{p}: not valid JSON ({e}); delete it or re-run `acmix-bench run`") from None
            items = data.get("cells", data) if isinstance(data, dict) else data
            plan = []
            for it in items if isinstance(items, list) else []:
                if isinstance(it, str):
                    plan.append({"cell_id": it})
                elif isinstance(it, dict):
                    plan.append(it)
            report = data.get("report") if isinstance(data, dict) else None
            return plan, report if isinstance(report, dict) else {}
    return None, {}


def report_section_of(config_path) -> dict:
    """The `report` section of a matrix YAML as written (a mapping; `report: true/false` has no settings)."""
    import yaml

    try:
        raw = yaml.safe_load(Path(config_path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"--matrix {config_path}: cannot read it ({' '.join(str(e).split())})") from None
    rep = raw.get("report") if isinstance(raw, dict) else None
    return rep if isinstance(rep, dict) else {}


def check_margin(value, where: str) -> float:
    """An equivalence margin: a finite number > 0 (top-1 points)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{where}: margin {value!r} is not a number > 0 (top-1 points, e.g. 0.5)")
    return float(value)


def load_results(path, planned: list[dict] | None = None, report_config: dict | None = None) -> ResultSet:
    """Read RESULTS_DIR/cells/*.json (the cells/ folder itself is accepted too). The planned cells are
    `planned` when given (cell dicts, e.g. the runner's expansion of a matrix config: bench.report_cli
    plan_from_config), else those of a plan file next to cells/ when there is one; the report settings
    (`report` section: margin) likewise `report_config`, else the plan file's."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"results directory {root} does not exist; pass the OUT directory of `acmix-bench run`")
    if not root.is_dir():
        raise ValueError(f"{root} is a file; pass the OUT directory of `acmix-bench run` (it holds cells/*.json)")
    cells = root / "cells"
    if not cells.is_dir():
        if root.name == "cells":
            cells, root = root, root.parent
        else:
            raise FileNotFoundError(
                f"{root} has no cells/ folder; pass the OUT directory of `acmix-bench run` (records are OUT/cells/*.json)")
    records, problems, seen = [], [], {}
    for f in sorted(cells.glob("*.json")):
        try:
            rec = json.loads(f.read_text())
            check_record(rec)
        except json.JSONDecodeError as e:
            problems.append((f.name, f"not valid JSON ({e.msg} at line {e.lineno}); the write was cut short? re-run the cell"))
            continue
        except (OSError, UnicodeDecodeError) as e:
            problems.append((f.name, f"cannot read: {e}"))
            continue
        except ValueError as e:
            problems.append((f.name, str(e)))
            continue
        if rec["cell_id"] in seen:
            problems.append((f.name, f"duplicate cell_id {rec['cell_id']!r} (also in {seen[rec['cell_id']]}); ignored"))
            continue
        seen[rec["cell_id"]] = f.name
        records.append(rec)
    if not records:
        detail = f" ({len(problems)} unreadable: {problems[0][0]}: {problems[0][1]})" if problems else ""
        raise ValueError(f"no usable records in {cells}{detail}; run `acmix-bench run` first or check the path")
    plan, plan_report = _read_plan(root)
    return ResultSet(root=root, records=records, problems=problems, planned=plan if planned is None else planned,
                     report_config=plan_report if report_config is None else report_config)


# ---------------------------------------------------------------------------- flattening

def _num(x):
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else math.nan


def count_voice(rec: dict) -> str | None:
    """The counter voice a report shows for this record: the formula, falling back to fvcore, then any."""
    voices = ((rec.get("counts") or {}).get("voices")) or {}
    for v in ("formula", "fvcore"):
        if isinstance(voices.get(v), dict) and voices[v].get("total"):
            return v
    for v, d in voices.items():
        if isinstance(d, dict) and d.get("total"):
            return v
    return None


def stage_counts(rec: dict, voice: str | None = None) -> dict[str, dict[str, float]]:
    voice = voice or count_voice(rec)
    if voice is None:
        return {}
    d = rec["counts"]["voices"][voice]
    return {s: {"params": _num((d.get(s) or {}).get("params")), "macs": _num((d.get(s) or {}).get("macs"))}
            for s in STAGES if s in d}


def config_key(cell: dict) -> str:
    """A stable text key for a cell's configuration (everything but the seed)."""
    parts = {k: cell.get(k) for k in CONFIG_KEYS}
    return json.dumps(parts, sort_keys=True, default=str)


def config_label(cell: dict, show: set | frozenset = frozenset()) -> str:
    """Short human name: model, shift and mixing where set, then the overrides named in `show`."""
    extra = [str(cell[k]) for k in ("shift", "mixing") if cell.get(k)]
    ov = cell.get("overrides") or {}
    extra += [f"{k}={ov[k]}" for k in sorted(show) if k in ov]
    return cell["model"] + (f" [{', '.join(extra)}]" if extra else "")


def varying_overrides(records: list[dict]) -> set:
    """Override keys whose values differ between records of the same model (those name a configuration;
    the rest, such as num_classes of a one-dataset run, only clutter labels)."""
    seen: dict = {}
    for r in records:
        ov = r["cell"].get("overrides") or {}
        for k, v in ov.items():
            if k in ("shift", "mixing", "widths"):
                continue
            seen.setdefault((r["cell"]["model"], k), set()).add(json.dumps(v, sort_keys=True, default=str))
    keys = {k for (_, k), vals in seen.items() if len(vals) > 1}
    # a key present in some records of a model and absent in others varies too
    for r in records:
        ov = r["cell"].get("overrides") or {}
        for (m, k) in seen:
            if m == r["cell"]["model"] and k not in ov:
                keys.add(k)
    return keys


def label_map(records: list[dict]) -> dict[str, str]:
    show = varying_overrides(records)
    out = {config_key(r["cell"]): config_label(r["cell"], show) for r in records}
    count: dict = {}
    for lbl in out.values():
        count[lbl] = count.get(lbl, 0) + 1
    for key, lbl in out.items():  # two configurations, one label: tell them apart
        if count[lbl] > 1:
            cell = json.loads(key)
            tag = f"group={cell['group']}" if cell.get("group") else "#" + hashlib.sha1(key.encode()).hexdigest()[:6]
            out[key] = f"{lbl} {tag}"
    return out


# trainer keys that change how the training data is sharded over processes (and so each process's order)
DATA_ORDER_TRAINER_KEYS = ("devices", "num_nodes", "strategy", "accelerator")


def data_settings(rec: dict) -> str:
    """Short hash of what decides the data and its order besides the seed: dataset, the data section of the
    record's config (subsets, batch size, augmentation, ...) and the trainer's process layout."""
    cfg = rec.get("config") or {}
    trainer = cfg.get("trainer") or {}
    key = {"dataset": (rec.get("cell") or {}).get("dataset"), "data": cfg.get("data"),
           "trainer": {k: trainer.get(k) for k in DATA_ORDER_TRAINER_KEYS}}
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]


def records_frame(records: list[dict]) -> pd.DataFrame:
    """One row per record with every number a report uses (NaN where absent)."""
    rows = []
    labels = label_map(records)
    for rec in records:
        cell = rec["cell"]
        m = rec.get("metrics") or {}
        sp = rec.get("speed") or {}
        env = rec.get("env") or {}
        voice = count_voice(rec)
        st = stage_counts(rec, voice)
        row = {
            "cell_id": rec["cell_id"], "status": rec["status"], "reason": rec.get("reason"),
            "config": config_key(cell), "label": labels[config_key(cell)],
            "dataset": cell.get("dataset"), "backbone": cell.get("backbone") or str(cell["model"]).split("-")[0],
            "model": cell["model"], "op": cell.get("op"), "shift": cell.get("shift"), "mixing": cell.get("mixing"),
            "group": cell.get("group"), "seed": cell.get("seed"),
            "num_classes": (cell.get("overrides") or {}).get("num_classes") or NUM_CLASSES.get(cell.get("dataset")),
            "count_voice": voice,
            "params": st.get("total", {}).get("params", math.nan), "macs": st.get("total", {}).get("macs", math.nan),
            # accuracy: a fraction in the record, percent in every report table
            "top1": 100 * _num(m.get("top1")), "top5": 100 * _num(m.get("top5")), "loss": _num(m.get("loss")),
            "val_top1": 100 * _num(m.get("val_top1")), "epochs": _num(m.get("epochs")), "steps": _num(m.get("steps")),
            "peak_mem_mb": _num(sp.get("peak_mem_mb")), "wall_s": _num(rec.get("wall_s")),
            "speed_device": sp.get("device") or env.get("device"), "speed_threads": sp.get("threads", env.get("threads")),
            "speed_jobs": sp.get("jobs", 1),
            "torch": env.get("torch"), "hostname": env.get("hostname"), "git_commit": env.get("git_commit"),
            "git_dirty": env.get("git_dirty"), "platform": env.get("platform"),
            # run settings (trainer, data, optim, measure): a short hash, so comparisons can tell reruns apart
            "settings": hashlib.sha1(json.dumps(rec.get("config"), sort_keys=True, default=str).encode()).hexdigest()[:8],
            # what fixes the data a seed sees and its order: equal here and equal seed -> comparisons pair by seed
            "data_settings": data_settings(rec),
        }
        for s in STAGES:
            if s != "total":
                row[f"params_{s}"] = st.get(s, {}).get("params", math.nan)
                row[f"macs_{s}"] = st.get(s, {}).get("macs", math.nan)
        for k in SPEEDS:
            d = sp.get(k) or {}
            row[k] = _num(d.get("median"))
            row[f"{k}_iqr"] = _num(d.get("iqr"))
            row[f"{k}_n"] = _num(d.get("n"))
        match = rec.get("match") or {}
        for k in ("target_macs", "rel_error", "tolerance", "reference_cell"):
            row[f"match_{k}"] = match.get(k) if k == "reference_cell" else _num(match.get(k))
        row["match_macs"] = _num(match.get("macs"))
        rows.append(row)
    return pd.DataFrame(rows)


def code_states(records: list[dict]) -> dict[str, list[str]]:
    """{code state: [cell ids]}: a state is the commit (short) plus " (dirty)" when the tree had uncommitted
    changes; "unknown" where a record names no commit. More than one state: the table mixes code versions."""
    out: dict[str, list[str]] = {}
    for rec in records:
        env = rec.get("env") or {}
        c = env.get("git_commit")
        state = (str(c)[:10] if c else "unknown") + (" (dirty)" if env.get("git_dirty") else "")
        out.setdefault(state, []).append(rec["cell_id"])
    return out


def is_synthetic(records: list[dict]) -> bool:
    """Test fixtures say so in env.platform; the report then says it is not a measurement."""
    return any("synthetic" in str((r.get("env") or {}).get("platform", "")).lower() for r in records)
