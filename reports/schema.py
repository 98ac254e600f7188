"""The cell record schema: what the runner writes and the reports read (OUT/cells/<cell_id>.json).

Both sides import this module: the runner (bench.runner.records) validates every
record before writing it, the reports validate every record they read. It uses
the standard library only (no torch, no pandas), so reading results stays light.

A record is one JSON object with the top-level keys of TOP_KEYS (types checked),
the cell identity (CELL_KEYS), the environment it ran in (ENV_KEYS), and,
where the cell got that far, counts, metrics (METRIC_KEYS), speed (SPEED_STATS
as {median, iqr, n}) and the matched-FLOPs result (MATCH_KEYS).
"""
from __future__ import annotations

SCHEMA = "acmix-bench/cell/v1"
# every status a record can carry; FINISHED are the final ones (a cell that ends
# "interrupted" or stays "running" is run again)
STATUSES = ("ok", "failed", "nan", "oom", "interrupted", "running")
FINISHED = ("ok", "failed", "nan", "oom")

NoneType = type(None)
TOP_KEYS = {
    "schema": str, "cell_id": str, "status": str, "reason": (str, NoneType), "cell": dict, "config": dict,
    "widths": (list, NoneType), "counts": (dict, NoneType), "match": (dict, NoneType),
    "metrics": (dict, NoneType), "speed": (dict, NoneType), "mixing_by_depth": (list, NoneType),
    "wall_s": (int, float), "env": dict, "started_at": str, "finished_at": (str, NoneType),
}
CELL_KEYS = ("model", "backbone", "op", "shift", "mixing", "dataset", "seed", "group", "overrides")
ENV_KEYS = ("python", "torch", "lightning", "torchvision", "device", "threads", "cuda", "git_commit", "hostname",
            "platform")
METRIC_KEYS = ("top1", "top5", "loss", "val_top1", "epochs", "steps")
SPEED_STATS = ("infer_samples_per_s", "latency_b1_ms", "train_samples_per_s")
MATCH_KEYS = ("group", "reference_cell", "target_macs", "macs", "rel_error", "tolerance")
MIXING_ROW_KEYS = ("layer", "depth", "alpha", "beta")


def validate_record(rec: dict) -> dict:
    """Raise ValueError naming the first problem; return the record unchanged when it conforms to v1."""
    if not isinstance(rec, dict):
        raise ValueError(f"record must be a JSON object, got {type(rec).__name__}")
    for k, t in TOP_KEYS.items():
        if k not in rec:
            raise ValueError(f"record is missing key {k!r}")
        if not isinstance(rec[k], t):
            raise ValueError(f"record key {k!r} has type {type(rec[k]).__name__}")
    if rec["schema"] != SCHEMA:
        raise ValueError(f"record schema {rec['schema']!r} is not {SCHEMA!r}")
    if rec["status"] not in STATUSES:
        raise ValueError(f"record status {rec['status']!r}; allowed: {', '.join(STATUSES)}")
    if rec["status"] not in ("ok", "running") and not rec["reason"]:
        raise ValueError(f"record with status {rec['status']!r} needs a reason")
    _require(rec["cell"], CELL_KEYS, "record cell")
    _require(rec["env"], ENV_KEYS, "record env")
    _check_counts(rec["counts"])
    m = rec["metrics"]
    if m is not None:
        _require(m, METRIC_KEYS, "record metrics")
    if rec["status"] == "ok" and m is None:
        raise ValueError("an 'ok' record needs metrics")
    _check_speed(rec["speed"])
    if rec["match"] is not None:
        _require(rec["match"], MATCH_KEYS, "record match")
    for row in rec["mixing_by_depth"] or []:
        if not all(k in row for k in MIXING_ROW_KEYS):
            raise ValueError("record mixing_by_depth rows need layer, depth, alpha, beta")
    return rec


def _require(d: dict, keys, where: str) -> None:
    for k in keys:
        if k not in d:
            raise ValueError(f"{where} is missing {k!r}")


def _check_counts(c) -> None:
    if c is None:
        return
    if c.get("unit") != "MACs" or not isinstance(c.get("voices"), dict) or "input_size" not in c:
        raise ValueError("record counts need unit 'MACs', input_size and a voices mapping")
    for voice, stages in c["voices"].items():
        for stage, pm in stages.items():
            if not (isinstance(pm, dict) and isinstance(pm.get("params"), int) and isinstance(pm.get("macs"), int)):
                raise ValueError(f"record counts.voices.{voice}.{stage} needs integer params and macs")


def _check_speed(s) -> None:
    if s is None:
        return
    _require(s, ("threads", "device", "peak_mem_mb") + SPEED_STATS, "record speed")
    for k in SPEED_STATS:
        st = s[k]
        if st is not None and not all(x in st for x in ("median", "iqr", "n")):
            raise ValueError(f"record speed.{k} needs median, iqr, n")
