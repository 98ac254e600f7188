"""Cluster execution through submitit: one job per cell.

Each job re-expands the (already validated) config, picks its cell by id and
runs it with `run_matrix`, so a job that is requeued or resubmitted skips a
finished cell and resumes an interrupted one exactly like a local rerun. Jobs
of one matrix write into one OUT directory; records are per cell and atomic,
so they never clobber each other. `cluster="local"` (submitit's LocalExecutor)
runs the same path on this machine and is what the tests use.
"""
from __future__ import annotations

import os

from submitit.helpers import Checkpointable

from . import records as R
from .cells import expand


def run_cells_job(cfg: dict, out: str, cell_ids: list[str]) -> dict:
    """Entry point of a submitit job: run the named cells (skipping finished ones)."""
    from .execute import run_matrix

    cells = [c for c in expand(cfg) if c["cell_id"] in set(cell_ids)]
    missing = set(cell_ids) - {c["cell_id"] for c in cells}
    if missing:
        raise ValueError(f"cells {sorted(missing)} are not in this config's expansion")
    res = run_matrix(cfg, cells, out, progress=False)
    if res.get("exit") is not None:
        # the cell was stopped by a SystemExit (submitit's requeue after checkpoint(): it exits with the code its
        # scheduler reads); the runner recorded the cell as interrupted, the exit itself must go through
        raise SystemExit(res["exit"])
    return res


class CellsJob(Checkpointable):
    """The job function, a submitit Checkpointable: on preemption or time-out (Slurm signals the job; submitit
    calls checkpoint()) the same call is resubmitted, and the rerun resumes each unfinished cell from
    OUT/ckpt/<cell_id>/last.ckpt (written every trainer.checkpoint_every_n_steps steps), skipping finished ones."""

    def __call__(self, cfg: dict, out: str, cell_ids: list[str]) -> dict:
        return run_cells_job(cfg, out, cell_ids)

    def checkpoint(self, cfg: dict, out: str, cell_ids: list[str]):
        R.log_event(out, "requeue", ",".join(cell_ids))
        return super().checkpoint(cfg, out, cell_ids)


def submit(cfg: dict, cells: list[dict], out: str, *, cluster: str | None = None, wait: bool = False,
           slurm: dict | None = None, echo=print) -> tuple[list, list[dict] | None]:
    """Submit one job per cell; cluster "slurm" or "local" (submitit's LocalExecutor).

    Returns (jobs, failed): failed is wait_jobs' list when wait, else None."""
    import submitit

    folder = os.path.join(out, "submitit", "%j")
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as e:  # e.g. no srun/sbatch here
        raise ValueError(f"--executor {cluster}: {' '.join(str(e).split())}; run on a Slurm login node, or use "
                         f"--executor local / inline") from None
    t = cfg["trainer"]
    if isinstance(t["devices"], bool) or not isinstance(t["devices"], int) or t["devices"] < 1:
        raise ValueError(f"--executor {cluster}: trainer.devices must be a number of devices per node to request "
                         f"(got {t['devices']!r}); set e.g. --set trainer.devices=4")
    params = {"nodes": t["num_nodes"], "tasks_per_node": t["devices"],
              "timeout_min": int((slurm or {}).get("time_min") or 24 * 60), "name": f"acmix-{cfg['name']}"}
    if t["accelerator"] in ("gpu", "cuda"):
        params["gpus_per_node"] = t["devices"]
    s = slurm or {}
    if ex.cluster == "slurm":
        for key, arg in (("partition", "slurm_partition"), ("account", "slurm_account"),
                         ("array_parallelism", "slurm_array_parallelism")):
            if s.get(key):
                params[arg] = s[key]
    if s.get("cpus_per_task"):
        params["cpus_per_task"] = s["cpus_per_task"]
    if s.get("mem_gb"):
        params["mem_gb"] = s["mem_gb"]
    ex.update_parameters(**params)
    jobs = []
    with ex.batch():
        for c in cells:
            jobs.append(ex.submit(CellsJob(), cfg, out, [c["cell_id"]]))
    for c, j in zip(cells, jobs):
        R.log_event(out, "submitted", c["cell_id"], job_id=str(j.job_id), cluster=ex.cluster)
    echo(f"submitted {len(jobs)} job(s) to {ex.cluster} (logs in {os.path.join(out, 'submitit')}): "
         + ", ".join(str(j.job_id) for j in jobs[:8]) + (" ..." if len(jobs) > 8 else ""))
    if wait:
        failed = wait_jobs(cells, jobs, out, echo=echo)
        return jobs, failed
    return jobs, None


def wait_jobs(cells: list[dict], jobs: list, out: str, echo=print) -> list[dict]:
    """Wait for every job; return [{"job_id", "cell_id", "error"}] for the jobs that ended with a job-level error
    (a crash, a time-out or preemption not followed by a requeue, a cancelled job)."""
    failed = []
    for c, j in zip(cells, jobs):
        try:
            j.result()
        except Exception as e:  # noqa: BLE001 - a crashed job: its cell's record (if any) says what happened
            err = " ".join(str(e).split())[:300]
            failed.append({"job_id": str(j.job_id), "cell_id": c["cell_id"], "error": err})
            echo(f"job {j.job_id} ({c['cell_id']}) ended with an error: {err}")
    R.rebuild_results(out)
    echo(f"all {len(jobs)} job(s) finished ({len(failed)} with a job-level error)")
    return failed
