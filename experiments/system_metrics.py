"""This job's CPU, memory and GPUs, sampled on a thread, for each run's System metrics tab (``system/…`` metrics).

Why not MLflow's own ``SystemMetricsMonitor``: it opens its own client on the store and logs outside our tracker,
so its points are never spooled (at the first failed request its thread ends for good: seen here with a sqlite
store moved away mid-run, and a server that is down does the same), and it samples every GPU NVML sees on the
node, by NVML's numbering, other jobs' GPUs included. These samples go through ``MlflowTracker`` with the run's
other points (batched, spooled during an outage, replayed), under MLflow's key names, so the tab shows them as it
shows the monitor's; GPUs are the ones this process sees (CUDA_VISIBLE_DEVICES, as torch numbers them).
"""

from __future__ import annotations

import contextlib
import threading
import time

import psutil
import torch

from deeplab.distributed import usable_cpus

PREFIX = "system/"
INTERVAL_S = 10.0  # MLflow's default sampling interval
READS_PER_SAMPLE = 5  # GPU utilisation is NVML's last ~1 s: read a few times per sample and average


class SystemSampler:
    """Samples every ``interval_s`` on a daemon thread from :meth:`start` to :meth:`stop` (one sample at each);
    :meth:`take` hands over the samples so far as ``(timestamp ms, {key: value})``.

    Keys: ``system/cpu_utilization_percentage`` and ``system/system_memory_usage_{megabytes,percentage}`` (the
    node, as MLflow's monitor logs them); ``system/rank0_cpu_utilization_percentage`` (rank 0 and its data
    workers, in % of the CPUs this task may use) and ``system/rank0_memory_megabytes`` (their proportional set
    size: shared pages counted once); per GPU ``i`` of ``gpus`` (CUDA indices):
    ``system/gpu_{i}_utilization_percentage``, ``…_memory_usage_megabytes``, ``…_memory_usage_percentage`` and
    ``…_power_usage_watts``. A GPU that cannot be read (no nvidia-ml-py, no driver) is left out, said once."""

    def __init__(self, gpus: int = 0, interval_s: float = INTERVAL_S) -> None:
        self.gpus, self.interval_s = list(range(gpus)), interval_s
        self._samples: list[tuple[int, dict[str, float]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = psutil.Process()
        self._cpu_seen: dict[int, float] = {}
        self._since = time.monotonic()
        self.gpu_error: str | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        psutil.cpu_percent()  # CPU shares are measured between calls: these start the first period
        self._cpu_seconds()
        self._since = time.monotonic()
        self._keep(self._sample({}, shares=False))
        self._thread = threading.Thread(target=self._run, name="system-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling, after one last sample (a run shorter than the interval still shows two)."""
        if self._thread is None or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self._keep(self._sample({}))

    def take(self) -> list[tuple[int, dict[str, float]]]:
        with self._lock:
            samples, self._samples = self._samples, []
        return samples

    def _run(self) -> None:
        reads: dict[str, list[float]] = {}
        while not self._stop.wait(self.interval_s / READS_PER_SAMPLE):
            self._read_gpus(reads)
            if time.monotonic() - self._since >= self.interval_s:
                self._keep(self._sample(reads))
                reads = {}

    def _keep(self, sample: dict[str, float]) -> None:
        with self._lock:
            self._samples.append((int(time.time() * 1000), sample))

    def _sample(self, gpu_reads: dict[str, list[float]], shares: bool = True) -> dict[str, float]:
        """One sample; ``shares=False`` (at the start) leaves out the CPU shares, which need a period."""
        self._read_gpus(gpu_reads)
        memory = psutil.virtual_memory()
        values = {
            "cpu_utilization_percentage": psutil.cpu_percent(),
            "system_memory_usage_megabytes": memory.used / 1e6,
            "system_memory_usage_percentage": memory.used / memory.total * 100,
            **self._rank0(),
            **{key: sum(v) / len(v) for key, v in gpu_reads.items() if v},
        }
        if not shares:
            values = {k: v for k, v in values.items() if "cpu_utilization" not in k}
        return {PREFIX + key: round(value, 2) for key, value in values.items()}

    def _rank0(self) -> dict[str, float]:
        """CPU share and memory of this process and its children since the last sample."""
        now = time.monotonic()
        elapsed, self._since = now - self._since, now
        used = self._cpu_seconds()
        pss = 0.0
        for proc in self._tree():
            try:
                info = proc.memory_full_info()
                pss += getattr(info, "pss", info.rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        share = 100 * used / (elapsed * usable_cpus()) if elapsed > 0 else 0.0
        return {"rank0_cpu_utilization_percentage": share, "rank0_memory_megabytes": pss / 1e6}

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self._process, *self._process.children(recursive=True)]
        except psutil.NoSuchProcess:
            return [self._process]

    def _cpu_seconds(self) -> float:
        """CPU seconds the tree used since the last call (a process first seen counts from its start)."""
        seen, used = {}, 0.0
        for proc in self._tree():
            try:
                times = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            seen[proc.pid] = times.user + times.system
            used += seen[proc.pid] - self._cpu_seen.get(proc.pid, 0.0)
        self._cpu_seen = seen
        return max(used, 0.0)

    def _read_gpus(self, reads: dict[str, list[float]]) -> None:
        for i in self.gpus if self.gpu_error is None else ():
            try:
                used, total = torch.cuda.device_memory_used(i), torch.cuda.get_device_properties(i).total_memory
                values = {
                    f"gpu_{i}_utilization_percentage": torch.cuda.utilization(i),
                    f"gpu_{i}_memory_usage_megabytes": used / 1e6,
                    f"gpu_{i}_memory_usage_percentage": 100 * used / total,
                }
            except Exception as err:  # no nvidia-ml-py, no driver: CPU and memory go on without the GPUs
                self.gpu_error = f"{err.__class__.__name__}: {err}"
                print(f"system metrics: GPUs not sampled ({self.gpu_error})", flush=True)
                return
            with contextlib.suppress(Exception):  # some boards do not report power; the rest still counts
                values[f"gpu_{i}_power_usage_watts"] = torch.cuda.power_draw(i) / 1000
            for key, value in values.items():
                reads.setdefault(key, []).append(float(value))
