"""Speed and memory of one model: torch.utils.benchmark for inference and batch-1
latency, Lightning's ThroughputMonitor for the training step inside the real run.

Every statistic is {"median", "iqr", "n"}: the median and inter-quartile range
over n timed blocks (torch.utils.benchmark.Timer), converted to
the unit named by the key (samples/s or ms).
"""
from __future__ import annotations

import os
import statistics

import torch
from lightning.pytorch.callbacks import ThroughputMonitor


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), q[2] - q[0]


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (Linux: distinct (package, core) pairs of
    /proc/cpuinfo within the affinity mask; elsewhere os.cpu_count()). Hyper-threads share a core's
    vector units, so a compute-bound torch step gains little from a second thread per core."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = None
    try:
        cores, cpu, pkg = set(), None, "0"
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key, val = key.strip(), val.strip()
                if key == "processor":
                    cpu, pkg = int(val), "0"
                elif key == "physical id":
                    pkg = val
                elif key == "core id" and (allowed is None or cpu in allowed):
                    cores.add((pkg, val))
        if cores:
            return len(cores)
    except (OSError, ValueError):
        pass
    return len(allowed) if allowed else (os.cpu_count() or 1)


def resolve_threads(setting, processes_per_machine: int = 1) -> int | None:
    """torch threads for measure.threads: an integer as given, "auto" = physical cores divided among the
    processes of one machine (at least 1), None = leave torch's setting alone."""
    if setting is None:
        return None
    if setting == "auto":
        return max(1, physical_cores() // max(1, int(processes_per_machine)))
    return int(setting)


def reset_peak_rss() -> bool:
    """Linux: reset this process's peak resident set size (VmHWM) to the current RSS; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """Linux: peak resident set size (VmHWM) of this process since the last reset, in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def summarize(values: list[float]) -> dict | None:
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    med, iqr = _quartiles(values)
    return {"median": med, "iqr": iqr, "n": len(values)}


def _times(model, x, min_run_time: float, repeats: int) -> list[float]:
    """Seconds per forward, one value per block: `repeats` blocks of k calls (torch.utils.benchmark.Timer.timeit),
    k chosen so that all blocks together take about min_run_time."""
    from torch.utils.benchmark import Timer

    def fwd():
        with torch.inference_mode():
            model(x)

    timer = Timer(stmt="fwd()", globals={"fwd": fwd}, num_threads=torch.get_num_threads())
    timer.timeit(number=2)  # warm-up (allocator, lazy init, cudnn autotune)
    one = timer.timeit(number=1).median
    k = max(1, int(min_run_time / repeats / max(one, 1e-6)))
    return [timer.timeit(number=k).median for _ in range(repeats)]


def inference_speed(model: torch.nn.Module, input_size, batch_size: int, device: torch.device,
                    min_run_time: float = 0.5, latency: bool = True, repeats: int = 5) -> dict:
    """{"infer_samples_per_s", "latency_b1_ms"} measured in eval mode with random inputs."""
    was_training = model.training
    model.eval()
    try:
        x = torch.randn(batch_size, *input_size, device=device)
        t = _times(model, x, min_run_time, repeats)
        out = {"infer_samples_per_s": summarize([batch_size / v for v in t]), "latency_b1_ms": None}
        if latency:
            t1 = _times(model, x[:1], min_run_time, repeats)
            out["latency_b1_ms"] = summarize([v * 1e3 for v in t1])
    finally:
        model.train(was_training)
    return out


class RecordingThroughputMonitor(ThroughputMonitor):
    """Lightning's ThroughputMonitor that also keeps the per-step training rates it computes.

    window_size=2 makes every computed rate the rate of one optimiser step
    (samples of that step / its wall time, data loading included); the first
    `skip` steps (warm-up) are left out of the summary.
    """

    def __init__(self, skip: int = 2):
        super().__init__(batch_size_fn=lambda batch: int(batch[0].shape[0]), window_size=2)
        self.skip = skip
        self.train_rates: list[float] = []

    def _compute(self, trainer, iter_num=None) -> None:
        from lightning.pytorch.trainer.states import RunningStage

        stage = trainer.state.stage
        if stage == RunningStage.TRAINING:
            tp = self._throughputs[stage]
            if len(tp._samples) >= 2:
                # global rate: samples over all ranks per second
                m = tp.compute()
                rate = m.get("samples_per_sec")
                if rate is None and m.get("device/samples_per_sec") is not None:
                    rate = m["device/samples_per_sec"] * trainer.world_size
                if rate is not None and self._batches[stage] > self.skip:
                    self.train_rates.append(float(rate))
        super()._compute(trainer, iter_num)

    def train_summary(self) -> dict | None:
        return summarize(self.train_rates)
