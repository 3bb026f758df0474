"""The decode's stem over several devices, split by rows.

With the tiles dealt over several devices, the stem (post-quant conv, conv in, middle block) still ran on
the main device alone, and the other devices waited for it: on two H200s it was a fifth of the decode and
kept it at 1.5-1.7x one device (docs/multi_gpu.md). Here each device computes a full-width band of rows:

1. the ops before the middle block's attention, for its band, from the latent rows that band needs (halos
   as for any tile, with its own causal caches);
2. the attention input is gathered whole on every device (each frame's attention is global: every pixel
   is a key), and each device attends from the rows the ops after the attention need (its band plus their
   halo) to all keys;
3. the ops after the attention, for its band, written into the stem output in host memory.

Each output pixel is computed from the same inputs as on one device (the attention's softmax over the same
keys), so the result equals the one-device stem up to floating-point rounding (equal within 1e-5 in float32
in the CPU tests; not bitwise, since convolutions over bands may pick other kernels). Off by default since
the fast kernels made the stem 0.08 s of a 2.1 s decode and the exchanges cost more than the split saves
(RunOptions.split_stem; two H200s: bench/results/vae_multi_gpu_split_2xh200.json before, vae_multi_gpu_2xh200.json
after). Any
failure on any device (an error, out of memory) stops every band and the decode runs the stem on the main
device instead, with its own out-of-memory handling: the stem is redone, nothing else is lost.
"""
from __future__ import annotations

import threading
from contextlib import nullcontext

import torch

from .context import TileState
from .op_base import Seq
from .op_layers import FrameAttention
from .planner import grid
from .rect import Rect
from .schedule import slice_end


class SplitFailed(Exception):
    """A device failed during the split stem; ``__cause__`` says why."""


def split_parts(stem: Seq) -> tuple[Seq, FrameAttention, Seq] | None:
    """(before, attention, after) around the stem's one whole-frame attention; None without exactly one."""
    ops = list(stem.ops)
    found = [i for i, op in enumerate(ops) if isinstance(op, FrameAttention)]
    if len(found) != 1:
        return None
    i = found[0]
    return Seq(ops[:i]), ops[i], Seq(ops[i + 1 :])


def row_bands(size: tuple[int, int], n: int) -> list[Rect]:
    """``n`` near-equal full-width row bands of a latent frame of ``size`` (fewer if it has fewer rows)."""
    return grid(size, -(-size[0] // min(n, size[0])), size[1])


class _Exchange:
    """Each slice's attention inputs, one band per device, handed between the devices' threads."""

    def __init__(self, n: int):
        self.parts: list = [None] * n
        self.barrier = threading.Barrier(n)
        self.error: BaseException | None = None

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.barrier.abort()


def run_split_stem(parts: tuple[Seq, FrameAttention, Seq], z: torch.Tensor, workers, slice_len: int, *,
                   fault) -> torch.Tensor:
    """The stem output of latent ``z`` (1, C, T, H, W) over ``workers`` (multi_device.Worker, the main one
    first), as ``decode``'s one-device stem returns it: (T, C, H, W) in host memory. Raises SplitFailed.
    The caller advances its progress once it succeeds (a failed split is redone on one device)."""
    before, attention, after = parts
    _, _, T, H, W = z.shape
    size = (H, W)
    bands = row_bands(size, len(workers))
    workers = workers[: len(bands)]
    exchange = _Exchange(len(workers))
    store: dict = {}
    store_lock = threading.Lock()

    def work(i: int, worker, on_caller: bool) -> None:  # on_caller: the main device, on this thread
        ctx, band = worker.ctx, bands[i]
        queries = after.need(band, size)  # the attention rows the ops after it read
        inputs = before.need(band, size)
        state = TileState()
        f0 = 0
        try:
            if not on_caller and worker.device.type == "cuda":
                torch.cuda.set_device(worker.device)
            with torch.inference_mode():
                while f0 < T:
                    f1 = slice_end(f0, slice_len, T)
                    if fault is not None:
                        fault("stem", {"frames": (f0, f1), "rect": band, "worker": worker.index, "split": True})
                    x = z[:, :, f0:f1, inputs.y0 : inputs.y1, inputs.x0 : inputs.x1].to(ctx.device, ctx.dtype)
                    exchange.parts[i] = before.run(x, inputs, band, size, state, ctx)
                    exchange.barrier.wait()  # every band of this slice is ready
                    whole = torch.cat([p.to(ctx.device) for p in exchange.parts], dim=3)
                    exchange.barrier.wait()  # every device holds its copy: the bands may be replaced
                    y = attention.run_rows(whole, queries, size, state, ctx)
                    del whole
                    y = after.run(y, queries, band, size, state, ctx)
                    with store_lock:
                        if "out" not in store:
                            store["out"] = torch.empty((T, y.shape[1], H, W), dtype=ctx.dtype,
                                                       pin_memory=ctx.device.type == "cuda")
                    store["out"][f0:f1, :, band.y0 : band.y1].copy_(y[0].transpose(0, 1))
                    state.commit()
                    f0 = f1
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)  # its rows are in host memory before the tiles read them
        except threading.BrokenBarrierError:
            return  # another device failed; it said why
        except BaseException as exc:
            exchange.fail(exc)

    threads = [threading.Thread(target=work, args=(i, w, False), name=f"wan_accel stem {w.device}", daemon=True)
               for i, w in enumerate(workers) if i > 0]
    for t in threads:
        t.start()
    main = workers[0]
    with torch.cuda.device(main.device) if main.device.type == "cuda" else nullcontext():
        work(0, main, True)
    for t in threads:
        t.join()
    if exchange.error is not None:
        raise SplitFailed(f"{type(exchange.error).__name__}: {exchange.error}") from exchange.error
    return store["out"]
