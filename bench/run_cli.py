"""`acmix-bench run CONFIG --out DIR`: run a benchmark matrix; `acmix-bench overhead`: Lightning vs bare loop.

A thin layer over bench.runner: load and validate the config (with the quick-run
overrides applied), expand the cells, take this shard, then either print them
(--dry-run), run them here, or submit one job per cell through submitit.
"""
from __future__ import annotations

import argparse
import os
import sys

# Exit codes of `acmix-bench run` (docs/runner-hardening.md): a script or CI job can tell these apart.
EXIT_OK = 0             # every selected cell finished ok (or the cells were only listed / submitted)
EXIT_CELLS_NOT_OK = 1   # at least one selected cell is recorded failed, nan or oom
EXIT_BAD_INPUT = 2      # bad config, path or option (one-line error on stderr)
EXIT_JOBS_FAILED = 3    # --executor slurm --wait / local: a job ended with a job-level error
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM: finished records are intact, rerun to resume


def _overrides(args) -> dict:
    from bench.runner.config import parse_set

    ov = parse_set(getattr(args, "set", None))
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


def _devices(text: str):
    """--devices: a count, -1 or 'auto' (Lightning's convention)."""
    try:
        return int(text)
    except ValueError:
        return text


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
        import bench.report_cli  # noqa: F401 - `acmix-bench report` is importable
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


def not_ok_cells(out: str, cells: list[dict]) -> list[dict]:
    """Records of the selected cells that finished but not ok (failed, nan, oom), in cell order."""
    from bench.runner import records as R

    bad = []
    for c in cells:
        rec = R.read_record(out, c["cell_id"])
        if rec is not None and rec.get("status") in R.FINISHED and rec.get("status") != "ok":
            bad.append(rec)
    return bad


def _name_not_ok(bad: list[dict], echo=print) -> None:
    echo(f"acmix-bench run: {len(bad)} cell(s) not ok (exit {EXIT_CELLS_NOT_OK}; --retry-failed reruns them):")
    for r in bad:
        echo(f"  {r['status']:<7} {r['cell_id']}: {r.get('reason') or ''}")


def warn_unreadable_records(out: str, echo=print) -> list[str]:
    """Records that are not valid JSON (edited by hand, copied half): their cells count as not run and run again."""
    import json

    d = os.path.join(out, "cells")
    bad = []
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            with open(os.path.join(d, name)) as f:
                json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            bad.append(name)
            echo(f"acmix-bench run: warning: {os.path.join(d, name)} is not a readable record "
                 f"({' '.join(str(e).split())[:120]}); its cell runs again and the record is replaced")
    return bad


def warn_other_code(out: str, echo=print) -> bool:
    """Before resuming OUT: say so when its records were written by another commit (or a dirty tree) than the
    code about to run, since finished cells are kept and the table would mix both. True when it warned."""
    from bench.runner import records as R
    from bench.runner.provenance import git_state

    recs = R.read_records(out)
    if not recs:
        return False
    commit, dirty = git_state()
    others: dict[str, int] = {}
    for r in recs:
        env = r.get("env") or {}
        c, d = env.get("git_commit"), env.get("git_dirty")
        if c != commit or (d and c == commit and not dirty):
            key = (c[:10] if c else "unknown commit") + (" (dirty)" if d else "")
            others[key] = others.get(key, 0) + 1
    if not others:
        return False
    here = (commit[:10] if commit else "an unknown commit") + (" (dirty)" if dirty else "")
    echo(f"acmix-bench run: warning: {out} holds records written by other code ("
         + ", ".join(f"{k}: {n} cell(s)" for k, n in sorted(others.items()))
         + f") and this is {here}; finished cells are kept, so the table will mix both (the report flags it); "
           f"use a fresh --out to keep them apart")
    return True


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
        elif args.format == "json":
            import json

            sys.stdout.write(json.dumps({"config": cfg["name"], "shard": args.shard, "cells": json.loads(
                df.to_json(orient="records"))}, indent=1) + "\n")
        else:
            print(f"{cfg['name']}: {len(cells)} cells" + (f" (shard {args.shard})" if args.shard else ""))
            print(df.to_string(index=False))
        return 0
    out = args.out
    if out is None:
        raise ValueError("--out DIR is required to run (records go to DIR/cells/); use --dry-run to only list cells")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out!r} is a file; pass a directory (records go to DIR/cells/)")
    os.makedirs(out, exist_ok=True)
    from bench.runner.execute import is_rank_zero
    from bench.runner.records import atomic_write_json

    if is_rank_zero() and args.worker is None:
        warn_other_code(out)
        warn_unreadable_records(out)
    if args.jobs is not None and (isinstance(args.jobs, bool) or args.jobs < 1):
        raise ValueError(f"--jobs {args.jobs}: expected a number of cells to run side by side, >= 1")
    if is_rank_zero() and args.worker is None:  # the whole matrix (every shard writes the same plan)
        atomic_write_json(os.path.join(out, "plan.json"), {"config": cfg["name"], "config_file": args.config,
                                                           "cells": [c["cell_id"] for c in every],
                                                           "report": cfg["report"]})
    worker = parse_worker(args.worker)
    jobs = cfg["measure"]["jobs"] if args.jobs is None else args.jobs
    if args.executor == "inline" and worker is None and jobs > 1:
        return run_side_by_side(args, cfg, cells, out, jobs)
    if args.executor in ("slurm", "local"):
        from bench.runner.execute import pending
        from bench.runner.submit import submit

        todo, done = pending(cells, out, args.retry_failed)
        print(f"acmix-bench run: {len(cells)} cells, {len(done)} already finished, {len(todo)} to submit")
        if todo:
            prepare_data(cfg)
            wait = args.wait or args.executor == "local"
            _, failed_jobs = submit(
                cfg, todo, out, cluster=args.executor, wait=wait,
                slurm={"partition": args.slurm_partition, "account": args.slurm_account,
                       "time_min": args.slurm_time, "cpus_per_task": args.slurm_cpus_per_task,
                       "mem_gb": args.slurm_mem_gb, "array_parallelism": args.slurm_array_parallelism})
            if not wait:  # nothing more to know now; `run` again (or `report`) once the jobs are done
                return EXIT_OK
        else:
            failed_jobs = []
        bad = not_ok_cells(out, cells)
        if bad:
            _name_not_ok(bad)
        failed_jobs = failed_jobs or []
        todo_after, _ = pending(cells, out)  # a job that ended without its cell's record finishing
        unfinished = {c["cell_id"] for c in todo_after} - {j["cell_id"] for j in failed_jobs}
        if failed_jobs or unfinished:
            print(f"acmix-bench run: {len(failed_jobs) + len(unfinished)} job(s) failed (exit {EXIT_JOBS_FAILED}; "
                  f"rerun the same command to resume):")
            for j in failed_jobs:
                print(f"  job {j['job_id']} ({j['cell_id']}): {j['error']}")
            for cid in sorted(unfinished):
                print(f"  {cid}: ended without a finished record")
            return EXIT_JOBS_FAILED
        return EXIT_CELLS_NOT_OK if bad else EXIT_OK
    from bench.runner import execute as E

    if worker is not None:
        E.SIDE_BY_SIDE = worker[1]
    elif is_rank_zero():
        prepare_data(cfg)
    res = E.run_matrix(cfg, cells, out, progress=not args.no_progress, retry_failed=args.retry_failed,
                       verbose=args.verbose, worker=worker)
    if worker is not None:
        return EXIT_INTERRUPTED if res["interrupted"] else EXIT_OK
    if not is_rank_zero():
        return 0
    st = ", ".join(f"{k} {v}" for k, v in sorted(res["status"].items())) or "none run"
    print(f"acmix-bench run: {res['ran']} ran ({st}), {res['skipped']} skipped as finished; "
          f"{os.path.join(out, 'results.csv')} rebuilt")
    if res["interrupted"]:
        return EXIT_INTERRUPTED
    return _report_and_exit_code(args, cfg, cells, out)


def _report_and_exit_code(args, cfg: dict, cells: list[dict], out: str) -> int:
    """After an inline run (one process or --jobs workers): the report if configured, then the exit code
    from the selected cells' records."""
    if cfg["report"]["run"] and not args.no_report:
        _print_report(out, cfg)
    bad = not_ok_cells(out, cells)
    if bad:
        _name_not_ok(bad)
        return EXIT_CELLS_NOT_OK
    return EXIT_OK


def parse_worker(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    k, _, n = text.partition("/")
    return int(k), int(n)


def _worker_argv(argv: list[str], k: int, n: int) -> list[str]:
    """The parent's `run` arguments for worker k of n: --jobs dropped, no report, no bar."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--jobs":
            skip = True
            continue
        if a.startswith("--jobs="):
            continue
        out.append(a)
    return out + ["--no-report", "--no-progress", "--worker", f"{k}/{n}"]


def run_side_by_side(args, cfg: dict, cells: list[dict], out: str, jobs: int) -> int:
    """`run --jobs N` (measure.jobs): N worker processes run the matrix's cells side by side, each taking the next
    cell no other holds (the per-cell locks), with "auto" threads = physical cores / N in every worker (also
    when fewer cells than N are left, so that every cell is measured alike). Then one results table, the report
    and the exit code, as for a single process. Ctrl-C or SIGTERM stops every worker (cells under way are
    recorded interrupted; rerun the same command to resume)."""
    import signal
    import subprocess

    from bench.runner import execute as E
    from bench.runner.measure import resolve_threads
    from bench.runner.records import rebuild_results

    if E._processes_per_machine(cfg) > 1:
        raise ValueError(f"--jobs {jobs} runs cells side by side in single processes; it cannot be combined with "
                         f"CPU DDP (trainer.devices={cfg['trainer']['devices']}); set --jobs 1 (measure.jobs=1)")
    todo, done = E.pending(cells, out, args.retry_failed)
    threads = resolve_threads(cfg["measure"]["threads"], jobs)
    n = min(jobs, len(todo))
    print(f"acmix-bench run: {len(cells)} cells, {len(done)} already finished, {len(todo)} to run, {n} at a time "
          f"(--jobs {jobs}, {threads if threads else 'default'} torch thread(s) each); results in {out}", flush=True)
    rcs: list[int] = []
    interrupted = False
    if todo:
        prepare_data(cfg)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        procs = [subprocess.Popen([sys.executable, "-m", "bench.cli", *_worker_argv(args.argv, k, jobs)], env=env)
                 for k in range(n)]

        def forward(signum, frame):  # SIGTERM to the parent alone (a scheduler, `kill`): stop the workers too
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signum)
        try:
            old = signal.signal(signal.SIGTERM, forward)
        except ValueError:  # not the main thread
            old = None
        try:
            while True:
                try:
                    rcs = [p.wait() for p in procs]
                    break
                except KeyboardInterrupt:
                    # Ctrl-C in a terminal reaches the workers too, and each records its cell; a SIGINT sent to
                    # this process alone does not: then stop them once (a second signal would cut their clean-up)
                    if not interrupted:
                        interrupted = True
                        try:
                            for p in procs:
                                p.wait(timeout=5)
                        except subprocess.TimeoutExpired:
                            forward(signal.SIGTERM, None)
                        except KeyboardInterrupt:
                            pass
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)
    rebuild_results(out)
    todo_after, _ = E.pending(cells, out)
    if interrupted or EXIT_INTERRUPTED in rcs or any(r < 0 for r in rcs):
        print(f"acmix-bench run: interrupted; {len(todo_after)} cell(s) not finished, finished records are intact; "
              f"rerun the same command to resume", flush=True)
        return EXIT_INTERRUPTED
    crashed = [(k, r) for k, r in enumerate(rcs) if r not in (EXIT_OK, EXIT_CELLS_NOT_OK)]
    ran = len(todo) - len(todo_after)
    print(f"acmix-bench run: {ran} ran in {n} worker(s), {len(done)} skipped as finished; "
          f"{os.path.join(out, 'results.csv')} rebuilt", flush=True)
    if crashed or todo_after:
        what = [f"worker {k + 1} exited with {r}" for k, r in crashed]
        if todo_after:
            what.append(f"{len(todo_after)} cell(s) not finished: " + ", ".join(c["cell_id"] for c in todo_after))
        print(f"acmix-bench run: {'; '.join(what)} (exit {EXIT_JOBS_FAILED}; rerun the same command to resume)",
              flush=True)
        return EXIT_JOBS_FAILED
    return _report_and_exit_code(args, cfg, cells, out)


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
    p.add_argument("--format", choices=("text", "csv", "json"), default="text", help="--dry-run output format")
    p.add_argument("--shard", metavar="I/N", help="run only shard I of N (0-based, round-robin over the cells)")
    p.add_argument("--executor", choices=("inline", "slurm", "local"), default="inline",
                   help="inline: run here; slurm: one submitit job per cell; local: submitit's local executor")
    p.add_argument("--wait", action="store_true", help="with --executor slurm: wait for the jobs, then rebuild results")
    p.add_argument("--retry-failed", action="store_true", help="rerun cells recorded as failed, nan or oom")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="run N cells side by side on this machine, one process each, with 'auto' threads = physical "
                        "cores / N (default: the config's measure.jobs)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # I/N: one of --jobs N's worker processes
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per cell only)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="Lightning's own per-cell progress bars and messages (default: the matrix bar and one "
                        "line per cell)")
    p.add_argument("--no-report", action="store_true", help="do not print the report after the matrix")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set any config key, e.g. --set data.batch_size=64 --set trainer.precision=bf16-mixed "
                        "(repeatable; VALUE is read as YAML; applied before validation, after the file)")
    g = p.add_argument_group("quick-run overrides (passed to Lightning's Trainer; they change the cell ids)")
    g.add_argument("--max-epochs", type=int)
    g.add_argument("--max-steps", type=int)
    g.add_argument("--limit-train-batches", type=_limit)
    g.add_argument("--limit-val-batches", type=_limit)
    g.add_argument("--limit-test-batches", type=_limit)
    g.add_argument("--devices", type=_devices)
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
