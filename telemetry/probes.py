"""What the recorder measures besides the clock: GPU time and memory, process RAM.

Nothing here imports ComfyUI. The CUDA probe takes the ``torch.cuda`` module as an argument so
tests can hand it a fake; it never synchronizes: GPU time is read from CUDA events once they
have completed (``query()``), and only :meth:`CudaProbe.resolve` with ``block=True`` waits, which
the recorder calls after the prompt, never inside a node.
"""
from __future__ import annotations

import os
from typing import Any, Callable

MB = 1024 * 1024


def _rss_reader() -> Callable[[], int | None]:
    """Resident set size in bytes. On Linux one ``pread`` of /proc/self/statm (~2 us), else psutil."""
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY)
        page = os.sysconf("SC_PAGE_SIZE")
        pread = os.pread

        def rss_statm() -> int | None:
            return int(pread(fd, 128, 0).split()[1]) * page

        rss_statm()
        return rss_statm
    except Exception:
        pass
    try:
        import psutil

        proc = psutil.Process()
        mem = proc.memory_info

        def rss() -> int | None:
            return mem().rss

        return rss
    except Exception:  # psutil missing or broken: fall back to /proc, else nothing
        page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        path = "/proc/self/statm"
        if not os.path.exists(path):
            return lambda: None

        def rss_proc() -> int | None:
            with open(path) as fh:
                return int(fh.read().split()[1]) * page

        return rss_proc


class NullProbe:
    """No GPU: wall time and RAM only."""

    device = "cpu"

    def __init__(self, rss: Callable[[], int | None] | None = None):
        self.rss = rss or _rss_reader()

    def begin(self) -> Any:
        return None

    def end(self, token: Any) -> dict:
        return {}

    def resolve(self, pending: Any, block: bool = False) -> float | None:
        return None


class CudaProbe(NullProbe):
    """CUDA events on the node's current stream and the caching allocator's peak counters."""

    def __init__(self, cuda: Any, device: Any = None, rss: Callable[[], int | None] | None = None,
                 raw_stats: Callable[[Any], dict] | None = None):
        super().__init__(rss)
        self.cuda = cuda
        self.device_index = device
        # torch._C._cuda_memoryStats: the nested dict memory_stats() flattens; ~12 us instead of ~80 on an H100
        self.raw_stats = raw_stats
        try:
            self.device = str(cuda.get_device_name(device))
        except Exception:
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
            except Exception:
                self.raw_stats = None  # layout changed: use the public call from now on
        stats = cuda.memory_stats(self.device_index)
        out.update(
            vram_peak_allocated=stats.get("allocated_bytes.all.peak", 0),
            vram_peak_reserved=stats.get("reserved_bytes.all.peak", 0),
            vram_allocated=stats.get("allocated_bytes.all.current", 0),
            vram_reserved=stats.get("reserved_bytes.all.current", 0),
        )
        return out

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

    ``waiting``: nodes with ``gpu_pending`` event pairs and a ``gpu_s`` sum. ``block`` waits for the
    rest (only ever after the prompt).
    """
    left_over = []
    for node in waiting:
        left = []
        for pending in node.gpu_pending:
            try:
                secs = probe.resolve(pending, block=block)
            except Exception as exc:
                report("reading CUDA events", exc)
                secs = 0.0
            if secs is None:
                left.append(pending)
            else:
                node.gpu_s += secs
        node.gpu_pending = left
        if left:
            left_over.append(node)
    return left_over


def default_probe() -> NullProbe:
    """A CUDA probe when torch has already initialised CUDA, else the CPU probe.

    Never initialises CUDA itself: a process that has not touched the GPU gets the CPU probe.
    """
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return CudaProbe(torch.cuda, torch.cuda.current_device(),
                             raw_stats=getattr(torch._C, "_cuda_memoryStats", None))
    except Exception:
        pass
    return NullProbe()
