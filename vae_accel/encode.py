"""Exact, low-VRAM Wan VAE encode.

Per video: each spatial tile runs the downsampling path over all frames (first slice one
frame, later slices 4k frames), reading its pixels from host memory one slice at a time and
parking its latent-resolution features in host memory; then the middle block (whole-frame
attention), head and quant conv run over those features in temporal slices. The planner
uses one whole-frame tile whenever it fits, since halos cost work at full resolution.
"""
from __future__ import annotations

import logging

import torch

from ..telemetry.phases import note, phase
from . import multi_device, warmup
from .adapters import EncoderGraph, build_encoder, cached_graph, find_module
from .kernels.rewrite import accelerated
from .planner import plan_encode
from .progress import make_progress
from .run_options import RunOptions, check_layout
from .rect import Rect
from .runtime import conv_autotune, element_size, is_oom, release_memory
from .schedule import frame_loop, steps_for, tile_loop
from .validate import BadVideo, check_video

log = logging.getLogger("wan_accel")

def encoder_graph(vae, kernels: bool | None = None) -> EncoderGraph:
    """The cached graph :func:`encode` runs: rewritten with the fast kernels unless ``kernels`` is False."""
    return cached_graph(build_encoder if kernels is False else accelerated(build_encoder), vae)


def in_frame(f: int, time_factor: int) -> int:
    """First input frame of latent frame ``f`` (frame 0 alone, then ``time_factor`` frames each)."""
    return 0 if f == 0 else 1 + time_factor * (f - 1)


def encode(vae, video: torch.Tensor, options: RunOptions | None = None, *, layout: str = "raw",
           **option_changes) -> torch.Tensor:
    """Encode ``video`` with a Wan VAE into the latent mean, (B, C, T', h, w) float32 on the host. How
    it runs: ``options`` and/or the same names as keywords (run_options.RunOptions); ``tile`` is in
    latent pixels, ``slice_len`` in latent frames (4 input frames each).

    ``layout="raw"``: video (B, 3, T, H, W) in [-1, 1] (as the module's encode);
    ``layout="comfy"``: video (B, T, H, W, 3) in [0, 1] (ComfyUI IMAGE frames).
    Frames past the last 1 + 4k are dropped, as ComfyUI's encode does (logged).
    """
    check_layout(layout)
    o = RunOptions.of(options, **option_changes)
    warmup.wait()  # a kernel warm-up still running ends its current pass and stops: no compiling side by side
    graph = encoder_graph(vae, o.kernels)
    ctx = o.context(find_module(vae))
    video = check_video(video, graph.in_channels, graph.space_factor, layout, finite=False)
    if layout == "comfy":
        B, T, H, W, _ = video.shape
    else:
        B, _, T, H, W = video.shape
    tf, sf = graph.time_factor, graph.space_factor
    T_lat = 1 + (T - 1) // tf
    if in_frame(T_lat, tf) != T:
        log.info("wan_accel: encoding %d of %d frames (Wan encodes 1 + %dk frames; the last %d are dropped, as in ComfyUI)",
                 in_frame(T_lat, tf), T, tf, T - in_frame(T_lat, tf))
    h, w = H // sf, W // sf
    devices = multi_device.devices_for(o, ctx, find_module(vae), "encode")
    budget_bytes = multi_device.shared_budget(devices, "encode", o.budget_bytes, ctx.device)
    staged = staging_bytes(video.shape, layout, ctx.dtype, budget_bytes)
    if staged:  # the pixels live on the device for the whole encode: the plan gets the rest of the budget
        try:
            video, layout = stage_video(video, layout, T, ctx), "raw"
            budget_bytes = None if budget_bytes is None else budget_bytes - staged
        except Exception as exc:
            if not is_oom(exc):
                raise
            staged = 0
            release_memory(ctx.device)
            log.info("wan_accel: no room to stage the video on %s; tiles read their pixels from host memory",
                     ctx.device)
    check_finite(video)
    plan = plan_encode(graph.down, (h, w), T_lat, element_size(ctx.dtype), budget_bytes, sf, tf, o.tile, o.slice_len)
    log.debug("wan_accel encode plan: %s", plan)
    note("vae.plan", stage="encode", devices=len(devices), staged_mb=round(staged / 2**20, 1),
         **plan.facts((h, w), T_lat, sf))

    out = torch.empty((B, graph.latent_channels, T_lat, h, w), dtype=torch.float32)
    tiles = plan.tiles((h, w))
    bar = make_progress(o.progress, total=B * steps_for(len(tiles), T_lat, plan.slice_len))
    # one whole-frame tile (the usual plan) has nothing to share: the main device runs it
    workers = multi_device.make_workers(devices, o, ctx, find_module(vae), graph.down) if len(tiles) > 1 else []
    with torch.inference_mode(), conv_autotune(o.conv_autotune):
        for b in range(B):
            with phase("vae.encode_tiles", tiles=len(tiles)):
                if workers:
                    box = {}
                    multi_device.run_tiles(workers, tiles, T_lat, plan.slice_len,
                                           lambda w: tile_step(graph, video, b, layout, T_lat, w.ctx, box),
                                           bar=bar, fault=o.fault, stage="encode")
                    features = box["store"]
                else:
                    features = _run_tiles(graph, video, b, layout, tiles, T_lat, plan.slice_len, ctx, bar, o.fault)
            with phase("vae.encode_middle", frames=T_lat):
                _run_tail(graph, features, out, b, plan.slice_len, ctx, bar, o.fault)
            del features
    multi_device.finish(workers, "encode")
    bar.close()
    return out


STAGE_SHARE = 0.25  # the most of the budget the staged pixels may take
STAGE_CHUNK_FRAMES = 8  # frames per host-to-device copy while staging (bounds the float32 transient)


def staging_bytes(shape, layout: str, dtype: torch.dtype, budget_bytes: int | None) -> int:
    """Bytes of the whole video in the compute dtype on the device, if it takes no more than STAGE_SHARE of
    the budget (no budget: always), else 0 (tiles read their pixels from host memory as they go).

    Why: a tile reading a strided sub-rectangle of host frames costs a host gather and a pageable copy that
    waits for the device to drain, once per tile and slice; on an H200 that left the GPU idle ~40 % of a
    81x1216x832 encode (bench/vae_after_sampler.py --profile). Staged, a read is a device slice."""
    nbytes = shape.numel() * element_size(dtype)
    return nbytes if budget_bytes is None or nbytes <= budget_bytes * STAGE_SHARE else 0


def stage_video(video, layout: str, frames: int, ctx) -> torch.Tensor:
    """``video`` on ``ctx.device`` as (B, 3, T, H, W) in [-1, 1] in the compute dtype (what ``_read`` makes
    of each slice), copied a few frames at a time so the float32 transient stays small."""
    if layout == "comfy":
        B, T, H, W, C = video.shape
    else:
        B, C, T, H, W = video.shape
    staged = torch.empty((B, C, T, H, W), device=ctx.device, dtype=ctx.dtype)
    for f0 in range(0, frames, STAGE_CHUNK_FRAMES):
        f1 = min(frames, f0 + STAGE_CHUNK_FRAMES)
        if layout == "comfy":  # contiguous frames: one plain copy, the layout change on the device
            chunk = video[:, f0:f1].to(ctx.device).permute(0, 4, 1, 2, 3).to(ctx.dtype) * 2 - 1
        else:
            chunk = video[:, :, f0:f1].to(ctx.device)
        staged[:, :, f0:f1] = chunk
    return staged


def check_finite(video) -> None:
    if not torch.isfinite(video).all():
        raise BadVideo("video contains NaN or infinite values")


def _read(video, b: int, layout: str, frames: tuple[int, int], rect: Rect, ctx) -> torch.Tensor:
    """One slice of one tile's input pixels, on the device as (1, C, t, h, w) in [-1, 1]."""
    f0, f1 = frames
    if layout == "comfy":
        x = video[b, f0:f1, rect.y0 : rect.y1, rect.x0 : rect.x1, :]
        x = x.to(ctx.device, non_blocking=True).permute(3, 0, 1, 2).unsqueeze(0)
        x = x.to(ctx.dtype) * 2 - 1
    else:
        x = video[b : b + 1, :, f0:f1, rect.y0 : rect.y1, rect.x0 : rect.x1].to(ctx.device, ctx.dtype, non_blocking=True)
    if ctx.channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x


def tile_step(graph: EncoderGraph, video, b: int, layout: str, T_lat: int, ctx, box: dict):
    """The step ``tile_loop`` runs for video ``b``: one tile's slice of frames through the down path on
    ``ctx``'s device, its features written into ``box["store"]`` (host, (T', C, h, w), made by the first
    step of any tile; ``setdefault`` keeps one store when steps of several devices race to make it)."""
    tf, sf = graph.time_factor, graph.space_factor
    if layout == "comfy":
        size = (video.shape[2], video.shape[3])
    else:
        size = (video.shape[3], video.shape[4])
    h, w = size[0] // sf, size[1] // sf

    def step(rect, f0, f1, state):
        inr = graph.down.need(rect, size)  # the down path's output grid is the latent grid
        x = _read(video, b, layout, (in_frame(f0, tf), in_frame(f1, tf)), inr, ctx)
        y = graph.down.run(x, inr, rect, size, state, ctx)
        store = box.get("store")
        if store is None:  # host: flat VRAM in frames
            store = box.setdefault("store", torch.empty((T_lat, y.shape[1], h, w), dtype=ctx.dtype))
        store[f0:f1, :, rect.y0 : rect.y1, rect.x0 : rect.x1] = y[0].transpose(0, 1).to("cpu")

    return step


def _run_tiles(graph: EncoderGraph, video, b, layout, tiles, T_lat, k, ctx, bar, fault) -> torch.Tensor:
    """Down-path features of every tile, gathered on the host as (T', C, h, w)."""
    box = {}
    tile_loop(tiles, T_lat, k, tile_step(graph, video, b, layout, T_lat, ctx, box), device=ctx.device, fault=fault,
              bar=bar, stage="encode")
    return box["store"]


def _run_tail(graph: EncoderGraph, features, out, b: int, k: int, ctx, bar, fault) -> None:
    T_lat, _, h, w = features.shape
    full = Rect.full((h, w))

    def step(f0, f1, state):
        x = features[f0:f1].to(ctx.device, non_blocking=True).transpose(0, 1).unsqueeze(0)
        if ctx.channels_last:  # as every tile's input: the norm kernel's vector loads, one binary for all sizes
            x = x.contiguous(memory_format=torch.channels_last_3d)
        y = graph.tail.run(x, full, full, (h, w), state, ctx)
        out[b, :, f0:f1] = y[0].float().to("cpu")

    frame_loop(T_lat, k, step, device=ctx.device, fault=fault, bar=bar, stage="encode middle")
