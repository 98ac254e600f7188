"""The benchmark runner: matrix config -> cells -> one atomic record per cell -> results table.

    from bench.runner import load_config, expand, run_matrix
    cfg = load_config("configs/default.yaml")
    run_matrix(cfg, expand(cfg), "results/default")
"""
from .cells import cell_id, expand, parse_shard, shard
from .config import load_config, validate_config
from .records import SCHEMA, rebuild_results, read_records, validate_record, write_record

__all__ = ["SCHEMA", "cell_id", "expand", "load_config", "parse_shard", "read_records", "rebuild_results", "shard",
           "validate_config", "validate_record", "write_record", "run_matrix"]


def run_matrix(*args, **kwargs):
    from .execute import run_matrix as _run
    return _run(*args, **kwargs)
