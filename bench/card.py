"""Consumer-card emulation on a big GPU: make ComfyUI's process see a card of N GiB.

Every GPU bench takes ``--vram-gb N`` (profiles 12/16/24/32, any number works; 0 = the whole device).
Before the bench process touches CUDA, ``Card.start`` launches a *holder*: a separate process that
allocates device memory until exactly N GiB of the device stay free, and then waits. The bench then
starts ComfyUI (``comfy_boot.boot``), whose CUDA context and models come out of those N GiB, as on a
real card. ``report_total`` makes ``torch.cuda.mem_get_info`` report N GiB as the device total, which
is the only total ComfyUI reads (``model_management.get_total_memory``: its VRAM state, the weight
budget of partial loads, 0.33's tiled-decode budget).

Why a separate process, not a tensor in the bench's own process: ComfyUI's free memory is
``cudaMemGetInfo`` free + (torch reserved - torch active). Another process's allocation lowers the
first term and nothing else, exactly as a desktop or a browser does on a real card. An allocation in
ComfyUI's own process would go through (or around) the allocator ComfyUI configures at start
(``cuda_malloc.py`` picks cudaMallocAsync; 0.33's comfy-aimdo hooks the allocator), would show in
``memory_allocated`` peaks, and a filler made with torch before ComfyUI starts would fix the allocator
backend before ``cuda_malloc`` can choose it.

A filler made *after* the models load (``Card.fill_to`` again, later) cannot be evicted by ComfyUI,
which no real card does to it: the benches use that only as a separate "resident model" case (e.g. 2.5
GiB free beside a loaded expert), never as the card emulation.

Limits (docs/benchmarks.md): memory only. The H200's compute (~4-6x a 4090/5090 in bf16), HBM
bandwidth and PCIe link are not a consumer card's, so absolute seconds do not transfer: compare the
ratios measured in one run. Linux drivers never spill device memory into system RAM (Windows' "sysmem
fallback" does), so an allocation beyond the card fails here as on Linux.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

GIB = 2**30
MIB = 2**20
PROFILES_GIB = (12, 16, 24, 32)
TOLERANCE = 64 * MIB  # how close to the target the holder gets the free memory
CHUNK = 2 * GIB  # the holder allocates in chunks, so a fragmented device still fills


def filler_plan(free_bytes: int, target_free_bytes: int, chunk: int = CHUNK) -> list[int]:
    """Chunk sizes (multiples of 2 MiB, the driver's granularity) that bring ``free_bytes`` down to
    ``target_free_bytes``; empty if the device already has no more than the target free."""
    excess = free_bytes - target_free_bytes
    excess -= excess % (2 * MIB)
    if excess <= 0:
        return []
    sizes = [chunk] * (excess // chunk)
    if excess % chunk:
        sizes.append(excess % chunk)
    return sizes


def card_mem_get_info(real_fn, total_bytes: int):
    """``torch.cuda.mem_get_info`` as a card of ``total_bytes`` reports it: the real free memory (which
    the holder keeps at or under that) and that total."""
    def mem_get_info(device=None):
        free, real_total = real_fn(device)
        return min(free, total_bytes), min(real_total, total_bytes)

    mem_get_info.wan_accel_card_total = total_bytes
    mem_get_info.wan_accel_real = real_fn
    return mem_get_info


def real_mem_get_info(torch):
    fn = torch.cuda.mem_get_info
    return getattr(fn, "wan_accel_real", fn)


def report_total(torch, total_bytes: int) -> None:
    """Make this process's ``torch.cuda.mem_get_info`` report ``total_bytes`` as the device total. Call it
    before ComfyUI's ``model_management`` is imported (it reads the total once, at import)."""
    import torch.cuda.memory as memory

    fn = card_mem_get_info(real_mem_get_info(torch), total_bytes)
    torch.cuda.mem_get_info = fn
    memory.mem_get_info = fn


class Card:
    """The emulated card of one bench process: ``Card(vram_gb).start()`` before CUDA is used there."""

    def __init__(self, vram_gb: float | None, device_index: int = 0):
        self.vram_gb = vram_gb or None
        self.device_index = device_index
        self.holder: subprocess.Popen | None = None
        self.events: list[dict] = []

    @property
    def total_bytes(self) -> int | None:
        return int(self.vram_gb * GIB) if self.vram_gb else None

    def start(self, cuda: bool) -> "Card":
        if self.vram_gb and cuda:
            self.fill_to(self.vram_gb)
        return self

    def fill_to(self, free_gib: float | None) -> dict:
        """(Re)size the holder so that ``free_gib`` GiB of the device stay free (None: hold nothing);
        returns its report."""
        if self.holder is None:
            env = dict(os.environ)
            env.pop("PYTORCH_CUDA_ALLOC_CONF", None)  # the holder's allocator: plain cudaMalloc blocks
            self.holder = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "hold",
                                            str(self.device_index)], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, text=True, env=env)
        self.holder.stdin.write(f"{-1 if free_gib is None else int(free_gib * GIB)}\n")
        self.holder.stdin.flush()
        line = self.holder.stdout.readline()
        if not line:
            raise RuntimeError(f"the card holder process died (exit {self.holder.poll()}); see its stderr")
        event = json.loads(line) | {"target_free_gib": free_gib}
        self.events.append(event)
        if free_gib is not None and abs(event["free_after"] - int(free_gib * GIB)) > TOLERANCE:
            raise RuntimeError(f"could not leave {free_gib} GiB free: {event}")
        return event

    def release(self) -> None:
        if self.holder is not None:
            self.holder.stdin.close()
            self.holder.wait(timeout=60)
            self.holder = None

    def describe(self) -> dict:
        if not self.vram_gb:
            return {"emulated": False, "what": "the whole device"}
        return {"emulated": self.holder is not None or bool(self.events), "vram_gib": self.vram_gb,
                "method": "separate holder process leaves vram_gib free before this process uses CUDA; "
                          "torch.cuda.mem_get_info reports vram_gib as the total",
                "holder": self.events}


def add_arguments(parser) -> None:
    parser.add_argument("--vram-gb", type=float, default=0.0,
                        help=f"emulate a card of this many GiB (profiles {', '.join(map(str, PROFILES_GIB))}; "
                             "0: the whole device)")


class DeviceMemorySampler:
    """Peak device memory in use (as nvidia-smi would show it on the emulated card), sampled every
    ``interval`` s from ``cudaMemGetInfo``: what the allocator peaks miss (comfy-aimdo's weights live
    outside torch's allocator; the CUDA context; cuDNN workspaces)."""

    def __init__(self, torch, device_index: int = 0, interval: float = 0.005):
        self.torch = torch
        self.device_index = device_index
        self.interval = interval
        self.min_free: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _free(self) -> int:
        return real_mem_get_info(self.torch)(self.device_index)[0]

    def __enter__(self):
        self.min_free = self._free()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.min_free = min(self.min_free, self._free())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.min_free = min(self.min_free, self._free())

    def peak_used_gib(self, card: Card) -> float:
        total = card.total_bytes or real_mem_get_info(self.torch)(self.device_index)[1]
        return round((total - self.min_free) / GIB, 3)


def _hold(device_index: int) -> None:
    """The holder process: for each target (free bytes) read on stdin, free what it holds, then allocate
    until the device has that much free (-1: hold nothing); answer one JSON line. Exits when stdin closes."""
    import torch

    torch.cuda.set_device(device_index)
    torch.cuda.init()
    blocks: list = []
    for line in sys.stdin:
        target = int(line)
        blocks.clear()
        torch.cuda.empty_cache()
        free_before, total = torch.cuda.mem_get_info(device_index)
        for _ in range(3 if target >= 0 else 0):  # the context and rounding can leave the first pass a few MiB off
            free, _ = torch.cuda.mem_get_info(device_index)
            for size in filler_plan(free, target):
                blocks.append(torch.empty(size, dtype=torch.uint8, device=f"cuda:{device_index}"))
            if abs(torch.cuda.mem_get_info(device_index)[0] - target) <= TOLERANCE:
                break
        free_after = torch.cuda.mem_get_info(device_index)[0]
        print(json.dumps({"free_before": free_before, "free_after": free_after, "total": total,
                          "held": sum(b.numel() for b in blocks), "t": round(time.time(), 3)}), flush=True)


def _launch(total_bytes: int, script: str, args: list[str]) -> None:
    """Run a program (ComfyUI's main.py) as ``python script args`` would, with ``report_total`` applied the
    moment it first imports ``comfy.model_management``: after its own start-up code (cuda_malloc, comfy-aimdo)
    has run, before the device total is read."""
    import importlib.abc
    import runpy

    class PatchOnImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "comfy.model_management":
                sys.meta_path.remove(self)
                import torch

                report_total(torch, total_bytes)
            return None

    sys.meta_path.insert(0, PatchOnImport())
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).resolve().parent)  # as if run directly: ComfyUI's folder, not bench/
    runpy.run_path(script, run_name="__main__")


def launch_command(total_bytes: int | None, script: str, args: list[str]) -> list[str]:
    """The command line that runs ``script`` on the emulated card (plainly when there is none)."""
    if not total_bytes:
        return [sys.executable, script, *args]
    return [sys.executable, str(Path(__file__).resolve()), "launch", str(total_bytes), script, *args]


if __name__ == "__main__" and sys.argv[1:2] == ["hold"]:
    _hold(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
elif __name__ == "__main__" and sys.argv[1:2] == ["launch"]:
    _launch(int(sys.argv[2]), sys.argv[3], sys.argv[4:])
