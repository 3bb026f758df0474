"""Exact, flat-VRAM Wan VAE decode.

Order of work, per video in the batch:
1. the stem (post-quant conv, conv in, middle block with its whole-frame attention) runs over
   all latent frames in temporal slices and parks its output in host memory;
2. each spatial tile then runs the upsampling path over all frames (first slice one latent
   frame, later slices ``k`` frames), keeping only its own causal caches on the device, and
   streams its pixels into the host output.
Tiles read a halo from the stem output, so the result equals an untiled decode.
"""
from __future__ import annotations

import logging
import weakref
from collections import deque
from dataclasses import dataclass

import torch

from ..telemetry.phases import note, phase
from .adapters import DecoderGraph, build_decoder
from .ops import ExecContext, TileState
from .planner import Plan, plan_decode
from .progress import Progress, make_progress
from .rect import Rect
from .runtime import default_budget, is_oom, make_context, release_memory
from .sink import HostSink
from .validate import check_latent

log = logging.getLogger("wan_accel")
_graphs: "weakref.WeakKeyDictionary[torch.nn.Module, DecoderGraph]" = weakref.WeakKeyDictionary()

LAYOUTS = ("raw", "comfy")


def decoder_graph(vae) -> DecoderGraph:
    graph = build_decoder(vae)
    cached = _graphs.get(graph.module)
    if cached is None:
        _graphs[graph.module] = cached = graph
    return cached


@dataclass
class _Tile:
    rect: Rect  # latent pixels
    state: TileState
    next_frame: int
    slice_len: int


def out_frame(f: int, time_factor: int) -> int:
    """First output frame of latent frame ``f``: frame 0 decodes to one frame, later ones to ``time_factor``."""
    return 0 if f == 0 else 1 + time_factor * (f - 1)


def decode(
    vae,
    latent: torch.Tensor,
    *,
    layout: str = "raw",
    budget_bytes: int | None = None,
    tile: int | None = None,
    slice_len: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress=None,
    fault=None,
    channels_last: bool | None = None,
    fused_norm: bool | None = None,
) -> torch.Tensor:
    """Decode ``latent`` (B, C, T, H, W) with a Wan VAE; returns a host tensor.

    ``layout="raw"``: (B, 3, T', H', W') float32 in the model's range (as the module's decode);
    ``layout="comfy"``: (B, T', H', W', 3) float32 in [0, 1] (as ComfyUI's ``VAE.decode``).
    ``budget_bytes`` caps device memory for the plan (default: free memory on CUDA, none on CPU);
    ``tile`` (latent pixels) and ``slice_len`` (latent frames) override the planner.
    ``progress(done, total)`` is called after every step; ``fault(stage, info)`` runs before every
    step and may raise (tests use it to inject out-of-memory errors).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    graph = decoder_graph(vae)
    param = next(graph.module.parameters())
    device = torch.device(device) if device is not None else param.device
    dtype = dtype or param.dtype
    latent = check_latent(latent, graph.latent_channels)
    B, _, T, H, W = latent.shape
    ctx = make_context(device, dtype, channels_last, fused_norm)
    if budget_bytes is None:
        budget_bytes = default_budget(device)
    elem = torch.finfo(dtype).bits // 8
    plan = plan_decode(graph.up, (H, W), T, elem, budget_bytes, tile, slice_len)
    log.debug("wan_accel decode plan: %s", plan)

    oh, ow = graph.up.out_size((H, W))
    ot = out_frame(T, graph.time_factor)
    c = graph.out_channels
    shape = (B, c, ot, oh, ow) if layout == "raw" else (B, ot, oh, ow, c)
    sink = HostSink(shape, device)
    bar = make_progress(progress, total=B * _steps(plan, (H, W), T))
    with torch.inference_mode():
        for b in range(B):
            with phase("vae.stem", frames=T):
                stem_out = _run_stem(graph, latent[b : b + 1], plan, ctx, bar, fault)
            with phase("vae.tiles", tiles=len(plan.tiles((H, W)))):
                _run_tiles(graph, stem_out, b, plan, ctx, sink, layout, bar, fault)
            del stem_out
        with phase("vae.copies"):
            out = sink.finish()
    bar.close()
    return out


def _steps(plan: Plan, size, T: int) -> int:
    per_tile = 1 + -(-(T - 1) // plan.slice_len) if T > 1 else 1
    return per_tile * (1 + len(plan.tiles(size)))


def _slices(T: int, k: int):
    f = 0
    while f < T:
        f1 = 1 if f == 0 else min(f + k, T)
        yield f, f1
        f = f1


def _run_stem(graph: DecoderGraph, z: torch.Tensor, plan: Plan, ctx: ExecContext, bar: Progress, fault):
    """Stem output for all frames, (T, C, h, w) in host memory (on the device when it is the CPU)."""
    _, _, T, H, W = z.shape
    full = Rect.full((H, W))
    state = TileState()
    store = None
    f, k = 0, plan.slice_len
    while f < T:
        f1 = 1 if f == 0 else min(f + k, T)
        try:
            if fault is not None:
                fault("stem", {"frames": (f, f1)})
            x = z[:, :, f:f1].to(ctx.device, ctx.dtype, non_blocking=True)
            y = graph.stem.run(x, full, full, (H, W), state, ctx)
        except Exception as exc:
            if not is_oom(exc):
                raise
            state.rollback()
            x = y = None
            release_memory(ctx.device)
            if f1 - f <= 1:
                raise RuntimeError(
                    "Wan VAE decode: out of memory in the middle block on a single latent frame; "
                    "free VRAM (unload models, lower other nodes' use) or run the VAE on the CPU"
                ) from exc
            k = max(1, (f1 - f) // 2)
            log.warning("wan_accel: out of memory in the VAE stem, retrying with %d-frame slices", k)
            note("vae.oom_retry", stage="stem", slice_len=k)
            continue
        state.commit()
        if store is None:
            store = torch.empty((T,) + tuple(y.shape[1:2]) + tuple(y.shape[3:]), dtype=ctx.dtype,
                                pin_memory=ctx.device.type == "cuda")
        store[f:f1].copy_(y[0].transpose(0, 1), non_blocking=True)
        del x, y
        f = f1
        bar.advance()
    return store


def _run_tiles(graph, stem_out, b, plan, ctx, sink, layout, bar, fault):
    T, _, H, W = stem_out.shape
    size = (H, W)
    sf = graph.space_factor
    work = deque(_Tile(r, TileState(), 0, plan.slice_len) for r in plan.tiles(size))
    while work:
        t = work[0]
        f0 = t.next_frame
        f1 = 1 if f0 == 0 else min(f0 + t.slice_len, T)
        out_rect = t.rect.scale(sf)
        try:
            if fault is not None:
                fault("tile", {"rect": t.rect, "frames": (f0, f1)})
            x = stem_out[f0:f1].to(ctx.device, non_blocking=True).transpose(0, 1).unsqueeze(0)
            y = graph.up.run(x, Rect.full(size), out_rect, size, t.state, ctx)
            _emit(sink, y, b, out_frame(f0, graph.time_factor), out_rect, layout, full_width=out_rect.width == W * sf)
        except Exception as exc:
            if not is_oom(exc):
                raise
            t.state.rollback()
            x = y = None
            release_memory(ctx.device)
            _shrink(work, t, f1 - f0, exc)
            continue
        t.state.commit()
        del x, y
        bar.advance()
        if f1 >= T:
            work.popleft()
        else:
            t.next_frame = f1


def _shrink(work: deque, t: _Tile, frames: int, exc: BaseException) -> None:
    """Make the failed step smaller: fewer frames first, then split the tile in two.

    A split tile's halves inherit its committed caches (cropped on read), so no finished frame
    or tile is recomputed and none is written twice.
    """
    if frames > 1:
        t.slice_len = max(1, frames // 2)
        log.warning("wan_accel: out of memory decoding tile %s, retrying with %d-frame slices", t.rect, t.slice_len)
        note("vae.oom_retry", stage="tile", slice_len=t.slice_len)
        return
    r = t.rect
    if max(r.height, r.width) < 2:
        raise RuntimeError(
            f"Wan VAE decode: out of memory even for a {r.height}x{r.width} latent tile and one frame; "
            "free VRAM or run the VAE on the CPU"
        ) from exc
    if r.height >= r.width:
        mid = (r.y0 + r.y1) // 2
        halves = [Rect(r.y0, mid, r.x0, r.x1), Rect(mid, r.y1, r.x0, r.x1)]
    else:
        mid = (r.x0 + r.x1) // 2
        halves = [Rect(r.y0, r.y1, r.x0, mid), Rect(r.y0, r.y1, mid, r.x1)]
    work.popleft()
    for half in reversed(halves):
        work.appendleft(_Tile(half, t.state.child(), t.next_frame, t.slice_len))
    log.warning("wan_accel: out of memory decoding tile %s, splitting it into %s and %s", r, *halves)
    note("vae.oom_retry", stage="tile", split=str(r))


def _emit(sink: HostSink, y: torch.Tensor, b: int, t0: int, r: Rect, layout: str, full_width: bool) -> None:
    """Hand one decoded piece (1, C, t, h, w) to the sink in the requested layout."""
    y = y[0]
    t = y.shape[1]
    if layout == "comfy":
        y = y.float().add_(1.0).mul_(0.5).clamp_(0.0, 1.0).permute(1, 2, 3, 0)  # t, h, w, c
        if full_width:
            for i in range(t):
                sink.write((b, t0 + i, slice(r.y0, r.y1)), y[i].contiguous())
        else:
            sink.write((b, slice(t0, t0 + t), slice(r.y0, r.y1), slice(r.x0, r.x1)), y.contiguous())
    else:
        y = y.float()
        if full_width:
            for ch in range(y.shape[0]):
                for i in range(t):
                    sink.write((b, ch, t0 + i, slice(r.y0, r.y1)), y[ch, i].contiguous())
        else:
            sink.write((b, slice(None), slice(t0, t0 + t), slice(r.y0, r.y1), slice(r.x0, r.x1)), y.contiguous())
