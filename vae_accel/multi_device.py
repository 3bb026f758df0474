"""One decode or encode spread over several devices: the tiles of a plan dealt to one worker per device.

Each tile runs its whole temporal sequence of slices, with its own causal caches, on one device, so a
tile computes exactly what it computes in a one-device run: the output equals the one-device output
bitwise wherever the devices run the same kernels. The main device's worker runs on the calling thread
(it alone talks to the caller: progress, ComfyUI's weight casts, interrupts); every other device gets a
thread. Tiles are handed out one at a time, so a faster device takes more of them.

Each worker has its own execution context (its own copy of the weights, made once per call and dropped
with it; through the caller's weight source when there is one, fetched on the calling thread) and, for
decode, its own sink writing into the one shared host output. A worker whose device fails (any error, or
out of memory while another device is still working) puts its unfinished tile back, whole, for the
others and stops: work already streamed is kept, the tile restarts from its first frame elsewhere. The
last working device handles out of memory as the one-device engine does (smaller slices, split tiles).
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Callable

import torch

from ..telemetry.phases import note
from .context import ExecContext, module_weights
from .devices import resolve_devices
from .budget import LIMITS
from .op_base import ModuleRef, Seq, walk
from .planner import MIN_TILE, Plan, estimate_bytes
from .rect import Rect
from .runtime import default_budget, element_size, free_memory, is_oom, release_memory
from .schedule import tile_loop
from .sharing import Dealer, Stopped
from .sink import HostSink

log = logging.getLogger("wan_accel")


def devices_for(options, ctx: ExecContext, module: torch.nn.Module, kind: str) -> list[torch.device]:
    """The devices ``options.devices`` names for a ``kind`` run whose main device is ``ctx.device``. ``auto``
    takes a CUDA device only if its free memory holds the smallest default budget and the weights."""
    weights = sum(p.numel() for p in module.parameters()) * element_size(ctx.dtype)
    return resolve_devices(options.devices, ctx.device, need_bytes=LIMITS[kind][0] + weights)


def shared_budget(devices: list[torch.device], kind: str, chosen: int | None = None,
                  main: torch.device | None = None) -> int | None:
    """The budget every device can afford, since one plan runs on all of them: the least of their default
    budgets, or the caller's ``chosen`` budget (made for the ``main`` device) capped at what each other
    CUDA device has free."""
    if chosen is not None:
        free = [free_memory(d) for d in dict.fromkeys(devices) if d.type == "cuda" and d != main]
        return min([chosen, *free])
    budgets = [b for b in (default_budget(d, kind=kind) for d in dict.fromkeys(devices)) if b is not None]
    return min(budgets) if budgets else None


def plan_for_devices(plan: Plan, path: Seq, latent_size: tuple[int, int], n_devices: int, elem: int) -> Plan:
    """``plan`` with its full-width row bands cut finer so ``n_devices`` get equal shares: a plan of
    fewer bands than devices would leave devices idle, one of 3 bands on 2 devices one waiting for the
    last. Narrower bands need less memory, so the budget still holds. Tiles the user pinned, square
    tiles and bands thinner than the planner's smallest tile are left as they are."""
    H, W = latent_size
    tiles = plan.tiles(latent_size)
    if n_devices < 2 or len(tiles) % n_devices == 0 or plan.reason == "user override" or plan.tile_w < W:
        return plan
    bands = math.ceil(len(tiles) / n_devices) * n_devices
    tile_h = math.ceil(H / bands)
    if tile_h < MIN_TILE or len(Plan(tile_h, W, 1, 0, None, "").tiles(latent_size)) != bands:
        return plan
    est = estimate_bytes(path, tile_h, W, plan.slice_len, elem)
    return Plan(tile_h, W, plan.slice_len, est, plan.budget_bytes, f"{plan.reason}; {bands} bands for {n_devices} devices")


@dataclass
class Worker:
    """One device's share of a run: its context (weights), its sink (decode) and what it did."""

    index: int
    device: torch.device
    ctx: ExecContext
    sink: HostSink | None = None
    tiles: int = 0
    steps: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # of its thread: near ``seconds`` means launching, not the device, bounds it
    failed: BaseException | None = None
    on_main: bool = False  # uses the caller's own context and sink


def make_workers(devices: list[torch.device], options, ctx: ExecContext, module: torch.nn.Module, path: Seq,
                 sink: HostSink | None = None) -> list[Worker]:
    """One worker per entry of ``devices``, or none when the main device alone runs (the one-device
    engine). The first worker uses ``ctx`` (and ``sink``) when it is on the main device; the others get a
    context of their own, through the caller's weight source when ``ctx`` has one (fetched here, on the
    calling thread, and copied to the worker's device once)."""
    if list(devices) == [ctx.device]:
        return []
    workers = []
    for i, device in enumerate(devices):
        if i == 0 and device == ctx.device:
            workers.append(Worker(i, device, ctx, sink, on_main=True))
            continue
        weights = None if ctx.source is None else _copied_weights(path, ctx, device)
        wctx = replace(options, device=device, dtype=ctx.dtype, weights=weights).context(module)
        wsink = HostSink(None, device, out=sink.out) if sink is not None else None
        if device.type == "cuda" and device != ctx.device:
            torch.cuda.reset_peak_memory_stats(device)
        workers.append(Worker(i, device, wctx, wsink))
    return workers


def _copied_weights(path: Seq, ctx: ExecContext, device: torch.device):
    """A weight source on ``device`` that serves copies of what ``ctx``'s source hands out on the main device."""
    held: dict = {}
    for op in walk(path):
        for value in vars(op).values():
            if not isinstance(value, ModuleRef):
                continue
            module = value()
            if getattr(module, "weight", None) is None or module in held:
                continue
            with ctx.source(module, ctx.device, ctx.dtype) as (w, b):
                held[module] = (w.to(device, copy=True), None if b is None else b.to(device, copy=True))
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)  # the source may reuse its buffers once its copies are done

    def weights(module, dev, dtype):
        hit = held.get(module)
        return nullcontext(hit) if hit is not None else module_weights(module, dev, dtype)

    return weights


def finish(workers: list[Worker], stage: str) -> None:
    """After the run: per-device figures to the telemetry, the workers' weights dropped and their devices'
    cached memory given back (the main device's stays with its caller, as in a one-device run). No garbage
    collection pass: what a worker held goes with its last reference, and a pass cost the call ~0.1 s."""
    report(workers, stage)
    main = {w.device for w in workers if w.on_main}
    for w in workers:
        w.ctx = None
        w.sink = None
    for device in dict.fromkeys(w.device for w in workers):
        if device.type == "cuda" and device not in main:
            with torch.cuda.device(device):
                torch.cuda.empty_cache()


class _HandBack(Exception):
    """This device ran out of memory while others still work: its tile goes to them, whole."""


class _Steps:
    """Progress of every worker, reported on the calling thread only (ComfyUI's bar and its interrupt)."""

    def __init__(self, bar, dealer: Dealer):
        self.bar, self.dealer = bar, dealer
        self.queue: queue.SimpleQueue = queue.SimpleQueue()

    def for_worker(self, on_caller: bool):
        steps = self

        class _Bar:
            def advance(self, n: int = 1):
                steps.queue.put(n)
                if on_caller:
                    steps.drain()

        return _Bar()

    def drain(self, wait: float = 0.0) -> None:
        try:
            n = self.queue.get(timeout=wait) if wait else self.queue.get_nowait()
        except queue.Empty:
            return
        while True:
            try:
                self.bar.advance(n)
            except BaseException as exc:
                self.dealer.stop(exc)
                raise
            try:
                n = self.queue.get_nowait()
            except queue.Empty:
                return


def run_tiles(workers: list[Worker], tiles: list[Rect], total: int, k: int, make_step: Callable[[Worker], Callable], *,
              bar, fault, stage: str) -> None:
    """Every tile of ``tiles`` over ``total`` latent frames (slices of ``k``), dealt to ``workers``.
    ``make_step(worker)``: the ``tile_loop`` step on that worker's context. Raises when the run was
    stopped (the caller's progress raised) or when every device failed."""
    live = [w for w in workers if w.failed is None]
    dealer = Dealer(tiles, live)
    steps = _Steps(bar, dealer)
    threads = [threading.Thread(target=_work, args=(w, dealer, total, k, make_step, steps.for_worker(False), fault, stage),
                                name=f"wan_accel {stage} {w.device}", daemon=True) for w in live[1:]]
    for t in threads:
        t.start()
    try:
        with torch.cuda.device(live[0].device) if live[0].device.type == "cuda" else nullcontext():
            _work(live[0], dealer, total, k, make_step, steps.for_worker(True), fault, stage, idle=steps.drain)
        while any(t.is_alive() for t in threads):
            steps.drain(wait=0.05)
        steps.drain()
    except BaseException as exc:
        dealer.stop(exc)
        for t in threads:
            t.join()
        finish(workers, stage)  # the call ends here: the extra devices' weights and memory go now
        raise
    for t in threads:
        t.join()
    if dealer.pending:
        finish(workers, stage)
        raise _all_failed(stage, dealer.errors)


def _all_failed(stage: str, errors) -> RuntimeError:
    where = "; ".join(f"{w.device}: {type(e).__name__}: {e}" for w, e in errors)
    err = RuntimeError(f"Wan VAE {stage} failed on every device ({where}). Free memory on them (unload models) or "
                       "set devices to the main GPU alone ('auto' on one GPU, or its index)")
    err.__cause__ = errors[0][1] if errors else None
    return err


def _work(worker: Worker, dealer: Dealer, total: int, k: int, make_step, bar, fault, stage: str, idle=None) -> None:
    """Tiles from ``dealer`` until none is left, on ``worker``'s device (its thread, or the caller's)."""
    start, cpu_start = time.perf_counter(), time.thread_time()
    on_thread = idle is None
    if on_thread and worker.device.type == "cuda":
        torch.cuda.set_device(worker.device)

    def guard(fn, *args):
        if dealer.stopped is not None:
            raise Stopped()
        try:
            fn(*args)
        except BaseException as exc:
            if is_oom(exc) and dealer.others_alive(worker):
                raise _HandBack() from exc
            raise

    def guarded_fault(stage_name, info):
        if fault is not None:
            guard(fault, stage_name, {**info, "device": worker.device, "worker": worker.index})
        elif dealer.stopped is not None:
            raise Stopped()

    step = make_step(worker)

    def guarded_step(rect, f0, f1, state):
        guard(step, rect, f0, f1, state)
        worker.steps += 1

    try:
        with torch.inference_mode():  # per thread: the caller's mode does not reach a worker thread
            while (rect := dealer.take(idle)) is not None:
                try:
                    tile_loop([rect], total, k, guarded_step, device=worker.device, fault=guarded_fault, bar=bar,
                              stage=stage)
                except Stopped:
                    dealer.finish()
                    return
                except Exception as exc:
                    if dealer.stopped is not None:
                        dealer.finish()
                        if on_thread:
                            return
                        raise
                    cause = exc.__cause__ if isinstance(exc, _HandBack) else exc
                    worker.failed = cause
                    dealer.hand_back(worker, rect, cause)
                    log.warning("wan_accel: VAE %s on %s failed (%s: %s); its unfinished tile %s goes to the other "
                                "devices", stage, worker.device, type(cause).__name__, cause, rect)
                    note("vae.device_failed", stage=stage, device=str(worker.device), error=type(cause).__name__)
                    _settle(worker)
                    return
                dealer.finish()
                worker.tiles += 1
        _settle(worker)
    finally:
        worker.seconds += time.perf_counter() - start
        worker.cpu_seconds += time.thread_time() - cpu_start


def _settle(worker: Worker) -> None:
    """Finish this worker's copies into the host output (its finished tiles are kept) and, after a
    failure, give back the memory it held."""
    try:
        if worker.sink is not None and not worker.on_main:
            worker.sink.finish()
    except Exception as exc:  # a broken device: what it could not copy is redone by the tile's new owner
        log.warning("wan_accel: finishing the copies of %s failed: %s", worker.device, exc)
    if worker.failed is not None:
        release_memory(worker.device)


def report(workers: list[Worker], stage: str) -> None:
    """Per-device time, tiles and peak memory, for the telemetry (and the log at debug level)."""
    for w in workers:
        peak = None
        if w.device.type == "cuda" and not w.on_main:
            peak = round(torch.cuda.max_memory_allocated(w.device) / 2**30, 3)
        note("vae.device", stage=stage, device=str(w.device), tiles=w.tiles, steps=w.steps,
             seconds=round(w.seconds, 3), cpu_seconds=round(w.cpu_seconds, 3), peak_gib=peak, failed=w.failed is not None)
        log.debug("wan_accel %s on %s: %d tiles, %d steps, %.3f s, peak %s GiB%s", stage, w.device, w.tiles, w.steps,
                  w.seconds, peak, " (failed)" if w.failed is not None else "")
