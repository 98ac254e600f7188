"""Result records: one self-describing JSON file per cell, written atomically.

OUT/cells/<cell_id>.json holds everything a report needs (schema
"acmix-bench/cell/v1", defined and checked in reports/schema.py). A record is
written to a temporary file in the same directory, flushed to disk and renamed
over the target (os.replace is atomic on POSIX), so a reader or a killed run
never sees half a record. OUT/results.csv (and .parquet) are rebuilt from the records.
OUT/events.jsonl is an append-only log of cell starts and finishes (one line
per event, flushed), useful for auditing that each cell finished once.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import socket
import tempfile

# the record schema is shared with the reports; FINISHED and STATUSES are used through this module too
from reports.schema import FINISHED, SCHEMA, STATUSES, validate_record  # noqa: F401

RESULT_COLUMNS = [
    "cell_id", "status", "model", "op", "shift", "mixing", "dataset", "seed", "params", "macs",
    "top1", "top5", "train_samples_per_s", "infer_samples_per_s", "peak_mem_mb", "wall_s",
    # extra columns
    "backbone", "group", "reference_cell", "match_rel_error", "val_top1", "loss", "epochs", "steps",
    "latency_b1_ms", "infer_samples_per_s_iqr", "train_samples_per_s_iqr", "latency_b1_ms_iqr",
    "counts_voice", "threads", "jobs", "device", "reason", "finished_at",
]

def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _clean(obj):
    """JSON-safe: NaN/inf become null (JSON has no NaN), tuples become lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def atomic_write_json(path: str, obj) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_clean(obj), f, indent=1, sort_keys=False, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def record_path(out: str, cell_id: str) -> str:
    return os.path.join(out, "cells", cell_id + ".json")


def write_record(out: str, rec: dict) -> str:
    validate_record(rec)
    p = record_path(out, rec["cell_id"])
    atomic_write_json(p, rec)
    return p


def read_record(out: str, cell_id: str) -> dict | None:
    p = record_path(out, cell_id)
    try:
        with open(p) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:  # cannot happen with atomic writes; treat as not finished
        return None


def read_records(out: str) -> list[dict]:
    d = os.path.join(out, "cells")
    if not os.path.isdir(d):
        return []
    recs = []
    for name in sorted(os.listdir(d)):
        if name.endswith(".json") and not name.startswith("."):
            try:
                with open(os.path.join(d, name)) as f:
                    recs.append(json.load(f))
            except (OSError, json.JSONDecodeError):
                continue
    return recs


def log_event(out: str, event: str, cell_id: str, **extra) -> None:
    """Append one line to OUT/events.jsonl (O_APPEND: lines from several shards never interleave)."""
    os.makedirs(out, exist_ok=True)
    line = json.dumps({"time": now(), "event": event, "cell_id": cell_id, "pid": os.getpid(),
                       "host": socket.gethostname(), **extra}) + "\n"
    fd = os.open(os.path.join(out, "events.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _total(rec: dict, what: str):
    voices = (rec.get("counts") or {}).get("voices") or {}
    for v in ("formula", "fvcore") + tuple(voices):
        t = (voices.get(v) or {}).get("total")
        if t is not None:
            return t.get(what), v
    return None, None


def record_row(rec: dict) -> dict:
    cell, m, s = rec.get("cell") or {}, rec.get("metrics") or {}, rec.get("speed") or {}

    def stat(k, f="median"):
        v = s.get(k)
        return v.get(f) if isinstance(v, dict) else None

    params, voice = _total(rec, "params")
    macs, _ = _total(rec, "macs")
    return {
        "cell_id": rec.get("cell_id"), "status": rec.get("status"), "model": cell.get("model"),
        "op": cell.get("op"), "shift": cell.get("shift"), "mixing": cell.get("mixing"),
        "dataset": cell.get("dataset"), "seed": cell.get("seed"), "params": params, "macs": macs,
        "top1": m.get("top1"), "top5": m.get("top5"),
        "train_samples_per_s": stat("train_samples_per_s"), "infer_samples_per_s": stat("infer_samples_per_s"),
        "peak_mem_mb": s.get("peak_mem_mb"), "wall_s": rec.get("wall_s"),
        "backbone": cell.get("backbone"), "group": cell.get("group"),
        "reference_cell": (rec.get("match") or {}).get("reference_cell"),
        "match_rel_error": (rec.get("match") or {}).get("rel_error"),
        "val_top1": m.get("val_top1"), "loss": m.get("loss"), "epochs": m.get("epochs"), "steps": m.get("steps"),
        "latency_b1_ms": stat("latency_b1_ms"), "infer_samples_per_s_iqr": stat("infer_samples_per_s", "iqr"),
        "train_samples_per_s_iqr": stat("train_samples_per_s", "iqr"),
        "latency_b1_ms_iqr": stat("latency_b1_ms", "iqr"), "counts_voice": voice,
        "threads": s.get("threads"), "jobs": s.get("jobs", 1), "device": s.get("device") or (rec.get("env") or {}).get("device"),
        "reason": rec.get("reason"), "finished_at": rec.get("finished_at"),
    }


def rebuild_results(out: str):
    """Rebuild OUT/results.csv (and results.parquet when pyarrow is installed) from the records; return the frame."""
    import pandas as pd

    recs = [r for r in read_records(out) if r.get("schema") == SCHEMA]
    df = pd.DataFrame([record_row(r) for r in recs], columns=RESULT_COLUMNS)
    df = df.sort_values(["dataset", "model", "shift", "mixing", "seed", "cell_id"], na_position="first",
                        kind="stable").reset_index(drop=True) if len(df) else df
    os.makedirs(out, exist_ok=True)
    for ext, write in (("csv", lambda p: df.to_csv(p, index=False)),
                       ("parquet", lambda p: df.to_parquet(p, index=False))):
        target = os.path.join(out, f"results.{ext}")
        fd, tmp = tempfile.mkstemp(prefix=".results.", suffix="." + ext, dir=out)
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, target)
        except ImportError:  # no parquet engine: CSV only
            os.unlink(tmp)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return df


_ENV_CACHE: dict = {}


def environment(device: str | None = None) -> dict:
    import lightning
    import torch
    import torchvision

    from .provenance import cpu_model, git_state, library_versions

    if "git" not in _ENV_CACHE:  # per process: the code a process runs does not change under it
        _ENV_CACHE["git"] = git_state()
        _ENV_CACHE["cpu"] = cpu_model()
    if device is None:
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})"
    commit, dirty = _ENV_CACHE["git"]
    return {
        "python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
        "torchvision": torchvision.__version__, "device": device, "threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None, "git_commit": commit,
        "hostname": socket.gethostname(), "platform": platform.platform(),
        # provenance beyond the v1 required keys (older records lack them; see bench/runner/provenance.py)
        "git_dirty": dirty, "cpu": _ENV_CACHE["cpu"], "counting": library_versions(),
        "stage2_backend": None,  # filled per cell once its model is built: {operator: {path: backend}}
    }
