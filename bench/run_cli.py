"""`acmix-bench run CONFIG --out DIR`: run a benchmark matrix; `acmix-bench overhead`: Lightning vs bare loop.

A thin layer over bench.runner: load and validate the config (with the quick-run
overrides applied), expand the cells, take this shard, then either print them
(--dry-run), run them here, or submit one job per cell through submitit.
"""
from __future__ import annotations

import os
import sys


def _overrides(args) -> dict:
    ov = {}
    for flag, key in (("max_epochs", "trainer.max_epochs"), ("max_steps", "trainer.max_steps"),
                      ("limit_train_batches", "trainer.limit_train_batches"),
                      ("limit_val_batches", "trainer.limit_val_batches"),
                      ("limit_test_batches", "trainer.limit_test_batches"),
                      ("devices", "trainer.devices"), ("strategy", "trainer.strategy"),
                      ("num_nodes", "trainer.num_nodes"), ("accelerator", "trainer.accelerator"),
                      ("precision", "trainer.precision")):
        v = getattr(args, flag, None)
        if v is not None:
            ov[key] = v
    return ov


def _limit(text: str):
    """--limit-*-batches: an integer count or a fraction in (0, 1] (Lightning's convention)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"expected an integer number of batches or a fraction in (0, 1], got {text!r}") from None
    return v


def prepare_data(cfg: dict, echo=print) -> None:
    """Make sure every dataset of the matrix is on disk before the first cell, and say where it came from."""
    from bench.runner.prepare import prepare

    for name in cfg["matrix"]["datasets"]:
        echo(prepare(name, cfg["data"].get("root")))


def _print_report(out: str, cfg: dict, echo=print) -> None:
    try:
        import bench.report_cli  # noqa: F401 - the reports helper's `acmix-bench report`
        have_report = True
    except ImportError:
        have_report = False
    if have_report:
        from bench.cli import main as cli_main

        echo(f"\n$ acmix-bench report {out}")
        rc = cli_main(["report", out])
        if rc == 0:
            return
        echo(f"(acmix-bench report exited with {rc}; the results table instead)")
    import pandas as pd

    from bench.runner.records import rebuild_results

    df = rebuild_results(out)
    if df.empty:
        echo("no records yet")
        return
    cols = ["model", "shift", "mixing", "seed", "status", "params", "macs", "top1", "top5",
            "train_samples_per_s", "infer_samples_per_s", "latency_b1_ms", "wall_s"]
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_rows", 500):
        echo(f"\nResults ({os.path.join(out, 'results.csv')}; params and MACs: formula voice, "
             f"MACs = multiply-accumulates, FLOPs = 2 x MACs):")
        echo(df[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))


def run(args) -> int:
    from bench.runner import cells as C
    from bench.runner.config import load_config

    cfg = load_config(args.config, _overrides(args))
    every = C.expand(cfg)
    cells = C.shard(every, C.parse_shard(args.shard))
    if args.dry_run:
        df = C.cells_table(cells)
        if args.format == "csv":
            sys.stdout.write(df.to_csv(index=False))
        else:
            print(f"{cfg['name']}: {len(cells)} cells" + (f" (shard {args.shard})" if args.shard else ""))
            print(df.to_string(index=False))
        return 0
    out = args.out
    if out is None:
        raise ValueError("--out DIR is required to run (records go to DIR/cells/); use --dry-run to only list cells")
    os.makedirs(out, exist_ok=True)
    from bench.runner.execute import is_rank_zero
    from bench.runner.records import atomic_write_json

    if is_rank_zero():  # the whole matrix (every shard writes the same plan), for reports' "planned but missing"
        atomic_write_json(os.path.join(out, "plan.json"), {"config": cfg["name"], "config_file": args.config,
                                                           "cells": [c["cell_id"] for c in every]})
    if args.executor in ("slurm", "local"):
        from bench.runner.execute import pending
        from bench.runner.submit import submit

        todo, done = pending(cells, out, args.retry_failed)
        print(f"acmix-bench run: {len(cells)} cells, {len(done)} already finished, {len(todo)} to submit")
        if todo:
            prepare_data(cfg)
            wait = args.wait or args.executor == "local"
            submit(cfg, todo, out, cluster=args.executor, wait=wait,
                   slurm={"partition": args.slurm_partition, "account": args.slurm_account,
                          "time_min": args.slurm_time, "cpus_per_task": args.slurm_cpus_per_task,
                          "mem_gb": args.slurm_mem_gb, "array_parallelism": args.slurm_array_parallelism})
        return 0
    from bench.runner.execute import run_matrix

    if is_rank_zero():
        prepare_data(cfg)
    res = run_matrix(cfg, cells, out, progress=not args.no_progress, retry_failed=args.retry_failed)
    if not is_rank_zero():
        return 0
    st = ", ".join(f"{k} {v}" for k, v in sorted(res["status"].items())) or "none run"
    print(f"acmix-bench run: {res['ran']} ran ({st}), {res['skipped']} skipped as finished; "
          f"{os.path.join(out, 'results.csv')} rebuilt")
    if res["interrupted"]:
        return 130
    if cfg["report"] and not args.no_report:
        _print_report(out, cfg)
    return 0


def overhead(args) -> int:
    from bench.runner.overhead import main as overhead_main
    return overhead_main(args)


def register(sub) -> None:
    p = sub.add_parser("run", help="run a benchmark matrix (YAML config) and record one result per cell",
                       description="Run a benchmark matrix: every cell is built, counted, matched, measured, trained "
                                   "and tested; one JSON record per cell under OUT/cells/, OUT/results.csv rebuilt. "
                                   "A rerun skips finished cells and resumes interrupted ones.")
    p.add_argument("config", help="matrix YAML, e.g. configs/default.yaml")
    p.add_argument("--out", help="results directory (records in OUT/cells/, table in OUT/results.csv)")
    p.add_argument("--dry-run", action="store_true", help="print the expanded cells and exit")
    p.add_argument("--format", choices=("text", "csv"), default="text", help="--dry-run output format")
    p.add_argument("--shard", metavar="I/N", help="run only shard I of N (0-based, round-robin over the cells)")
    p.add_argument("--executor", choices=("inline", "slurm", "local"), default="inline",
                   help="inline: run here; slurm: one submitit job per cell; local: submitit's local executor")
    p.add_argument("--wait", action="store_true", help="with --executor slurm: wait for the jobs, then rebuild results")
    p.add_argument("--retry-failed", action="store_true", help="rerun cells recorded as failed, nan or oom")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per cell only)")
    p.add_argument("--no-report", action="store_true", help="do not print the report after the matrix")
    g = p.add_argument_group("quick-run overrides (passed to Lightning's Trainer; they change the cell ids)")
    g.add_argument("--max-epochs", type=int)
    g.add_argument("--max-steps", type=int)
    g.add_argument("--limit-train-batches", type=_limit)
    g.add_argument("--limit-val-batches", type=_limit)
    g.add_argument("--limit-test-batches", type=_limit)
    g.add_argument("--devices", type=int)
    g.add_argument("--strategy")
    g.add_argument("--num-nodes", type=int)
    g.add_argument("--accelerator")
    g.add_argument("--precision")
    s = p.add_argument_group("Slurm (with --executor slurm)")
    s.add_argument("--slurm-partition")
    s.add_argument("--slurm-account")
    s.add_argument("--slurm-time", type=int, metavar="MIN", help="time limit per job in minutes (default 1440)")
    s.add_argument("--slurm-cpus-per-task", type=int)
    s.add_argument("--slurm-mem-gb", type=int)
    s.add_argument("--slurm-array-parallelism", type=int)
    p.set_defaults(func=run)

    o = sub.add_parser("overhead", help="Lightning training-step throughput vs a bare PyTorch loop, side by side")
    o.add_argument("--model", default="resnet26-acmix", help="registry name")
    o.add_argument("--dataset", default="fashion_mnist")
    o.add_argument("--widths", type=int, nargs="+", default=[16, 16, 32, 64])
    o.add_argument("--image-size", type=int, default=16, help="resize the images (default 16, as configs/default.yaml)")
    o.add_argument("--stem", default="small")
    o.add_argument("--batch-size", type=int, default=64)
    o.add_argument("--steps", type=int, default=20, help="timed steps per repeat (after --warmup)")
    o.add_argument("--warmup", type=int, default=3)
    o.add_argument("--repeats", type=int, default=3)
    o.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    o.add_argument("--accelerator", default="auto")
    o.set_defaults(func=overhead)
