"""What the recorder measures besides the clock: GPU time and memory, process RAM.

Nothing here imports ComfyUI. The CUDA probe takes the ``torch.cuda`` module as an argument so
tests can hand it a fake; it never synchronizes: GPU time is read from CUDA events once they
have completed (``query()``), and only :meth:`CudaProbe.resolve` with ``block=True`` waits, which
the recorder calls after the prompt, never inside a node.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

MB = 1024 * 1024
log = logging.getLogger("wan_accel.telemetry")


STATM = "/proc/self/statm"
FailureReport = Callable[[str, BaseException], None]


def _rss_reader() -> Callable[[], int | None]:
    """Resident set size in bytes: one ``pread`` of /proc/self/statm on Linux (~2 us), else psutil, else None."""
    if hasattr(os, "pread") and os.path.exists(STATM):
        try:
            fd = os.open(STATM, os.O_RDONLY)
        except OSError:  # /proc without access: psutil reads it another way
            fd = None
        if fd is not None:
            page = os.sysconf("SC_PAGE_SIZE")
            pread = os.pread

            def rss_statm() -> int | None:
                return int(pread(fd, 128, 0).split()[1]) * page

            return rss_statm
    try:
        import psutil
    except ImportError:
        return lambda: None
    memory_info = psutil.Process().memory_info
    return lambda: memory_info().rss


def log_failure(where: str, exc: BaseException) -> None:
    """Where a probe's failures go when no recorder has claimed it."""
    log.warning("wan_accel telemetry: %s failed (%s: %s)", where, type(exc).__name__, exc)


class NullProbe:
    """No GPU: wall time and RAM only."""

    device = "cpu"

    def __init__(self, rss: Callable[[], int | None] | None = None, report: FailureReport = log_failure):
        self.rss = rss or _rss_reader()
        self.report = report  # errors the probe gets past (the recorder sets its report_failure)

    def begin(self) -> Any:
        return None

    def end(self, token: Any) -> dict:
        return {}

    def stamp(self, device: Any = None) -> Any:
        """A point in the GPU's stream to time a span between (None: no GPU time here)."""
        return None

    def resolve(self, pending: Any, block: bool = False) -> float | None:
        return None


class CudaProbe(NullProbe):
    """CUDA events on the node's current stream and the caching allocator's peak counters."""

    def __init__(self, cuda: Any, device: Any = None, rss: Callable[[], int | None] | None = None,
                 raw_stats: Callable[[Any], dict] | None = None, report: FailureReport = log_failure):
        super().__init__(rss, report)
        self.cuda = cuda
        self.device_index = device
        # torch._C._cuda_memoryStats: the nested dict memory_stats() flattens; ~12 us instead of ~80 on an H100
        self.raw_stats = raw_stats
        try:
            self.device = str(cuda.get_device_name(device))
        except Exception as exc:
            report("reading the GPU's name", exc)
            self.device = "cuda"

    def begin(self) -> Any:
        cuda = self.cuda
        cuda.reset_peak_memory_stats(self.device_index)
        start = cuda.Event(enable_timing=True)
        start.record(cuda.current_stream(self.device_index))
        return start

    def end(self, token: Any) -> dict:
        cuda = self.cuda
        stop = cuda.Event(enable_timing=True)
        stop.record(cuda.current_stream(self.device_index))
        out = {"gpu_events": (token, stop) if token is not None else None}
        if self.raw_stats is not None:
            try:
                raw = self.raw_stats(self.device_index)
                alloc, res = raw["allocated_bytes"]["all"], raw["reserved_bytes"]["all"]
                out.update(vram_peak_allocated=alloc["peak"], vram_peak_reserved=res["peak"],
                           vram_allocated=alloc["current"], vram_reserved=res["current"])
                return out
            except Exception as exc:
                self.report("reading the allocator's raw stats (public memory_stats() from now on)", exc)
                self.raw_stats = None  # layout changed: use the public call from now on
        stats = cuda.memory_stats(self.device_index)
        out.update(
            vram_peak_allocated=stats.get("allocated_bytes.all.peak", 0),
            vram_peak_reserved=stats.get("reserved_bytes.all.peak", 0),
            vram_allocated=stats.get("allocated_bytes.all.current", 0),
            vram_reserved=stats.get("reserved_bytes.all.current", 0),
        )
        return out

    def stamp(self, device: Any = None) -> Any:
        """A CUDA event recorded now on ``device``'s current stream (the stream the caller queues work on,
        also inside a ``torch.cuda.stream`` block such as ComfyUI's offload stream)."""
        event = self.cuda.Event(enable_timing=True)
        event.record(self.cuda.current_stream(self.device_index if device is None else device))
        return event

    def resolve(self, pending: Any, block: bool = False) -> float | None:
        """Seconds between the two events, or None while the GPU has not reached the second."""
        if pending is None:
            return None
        start, stop = pending
        if not stop.query():
            if not block:
                return None
            stop.synchronize()
        return start.elapsed_time(stop) / 1000.0


def resolve_gpu_times(probe: NullProbe, waiting: list, block: bool,
                      report: Callable[[str, BaseException], None]) -> list:
    """Add the GPU seconds of every finished event pair to its node; the nodes still waiting come back.

    ``waiting``: nodes with ``gpu_pending`` event pairs and a ``gpu_s`` sum, and their model activity's
    ``lora_pending`` (event pair, during a load) of LoRA patches. ``block`` waits for the rest (only ever
    after the prompt).
    """
    def seconds(pending):
        try:
            return probe.resolve(pending, block=block)
        except Exception as exc:
            report("reading CUDA events", exc)
            return 0.0

    left_over = []
    for node in waiting:
        left = []
        for pending in node.gpu_pending:
            secs = seconds(pending)
            if secs is None:
                left.append(pending)
            else:
                node.gpu_s += secs
        node.gpu_pending = left
        activity = node.models
        lora_left = []
        for pending, during_load in activity.lora_pending:
            secs = seconds(pending)
            if secs is None:
                lora_left.append((pending, during_load))
            else:
                activity.lora_gpu(secs, during_load)
        activity.lora_pending = lora_left
        if left or lora_left:
            left_over.append(node)
    return left_over


def default_probe(report: FailureReport = log_failure) -> NullProbe:
    """A CUDA probe when torch has already initialised CUDA, else the CPU probe.

    Never initialises CUDA itself: a process that has not touched the GPU gets the CPU probe.
    """
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return CudaProbe(torch.cuda, torch.cuda.current_device(),
                             raw_stats=getattr(torch._C, "_cuda_memoryStats", None), report=report)
    except Exception as exc:
        report("starting the CUDA probe (GPU figures off for this run)", exc)
    return NullProbe(report=report)
