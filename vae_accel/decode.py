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

import torch

from ..telemetry.phases import note, phase
from . import multi_device, stem_split, warmup
from .adapters import DecoderGraph, build_decoder, cached_graph, find_module
from .context import ExecContext
from .op_base import Seq
from .kernels.rewrite import accelerated
from .planner import Plan, decode_calibration, plan_decode
from .progress import make_progress
from .run_options import RunOptions, check_layout
from .rect import Rect
from .runtime import conv_autotune, element_size, release_memory
from .schedule import frame_loop, slice_count, steps_for, tile_loop
from .sink import HostSink
from .validate import check_latent

log = logging.getLogger("wan_accel")

def decoder_graph(vae, kernels: bool | None = None) -> DecoderGraph:
    """The cached graph :func:`decode` runs: rewritten with the fast kernels unless ``kernels`` is False."""
    return cached_graph(build_decoder if kernels is False else accelerated(build_decoder), vae)


def out_frame(f: int, time_factor: int) -> int:
    """First output frame of latent frame ``f``: frame 0 decodes to one frame, later ones to ``time_factor``."""
    return 0 if f == 0 else 1 + time_factor * (f - 1)


def decode(vae, latent: torch.Tensor, options: RunOptions | None = None, *, layout: str = "raw",
           **option_changes) -> torch.Tensor:
    """Decode ``latent`` (B, C, T, H, W) with a Wan VAE; returns a host tensor. How it runs: ``options``
    and/or the same names as keywords (run_options.RunOptions).

    ``layout="raw"``: (B, 3, T', H', W') float32 in the model's range (as the module's decode);
    ``layout="comfy"``: (B, T', H', W', 3) float32 in [0, 1] (as ComfyUI's ``VAE.decode``).
    """
    check_layout(layout)
    o = RunOptions.of(options, **option_changes)
    warmup.wait()  # a kernel warm-up still running ends its current pass and stops: no compiling side by side
    graph = decoder_graph(vae, o.kernels)
    ctx = o.context(find_module(vae))
    latent = check_latent(latent, graph.latent_channels)
    B, _, T, H, W = latent.shape
    devices = multi_device.devices_for(o, ctx, find_module(vae), "decode")
    plan = _plan(graph, latent.shape, ctx, o, devices)
    log.debug("wan_accel decode plan: %s", plan)
    note("vae.plan", stage="decode", devices=len(devices), **plan.facts((H, W), T, graph.space_factor))

    oh, ow = graph.up.out_size((H, W))
    ot = out_frame(T, graph.time_factor)
    c = graph.out_channels
    sink = HostSink((B, c, ot, oh, ow) if layout == "raw" else (B, ot, oh, ow, c), ctx.device)
    bar = make_progress(o.progress, total=B * steps_for(len(plan.tiles((H, W))), T, plan.slice_len))
    split = stem_split.split_parts(graph.stem) if o.split_stem and len(devices) > 1 else None
    weighted = Seq([graph.stem, graph.up]) if split is not None else graph.up  # what other devices need weights of
    with phase("vae.devices_ready", devices=len(devices)):
        workers = multi_device.make_workers(devices, o, ctx, find_module(vae), weighted, sink)  # none: one device
    with torch.inference_mode(), conv_autotune(o.conv_autotune):
        for b in range(B):
            with phase("vae.stem", frames=T, split=split is not None and bool(workers)):
                stem_out = _stem(graph, latent[b : b + 1], plan, ctx, bar, o.fault, workers, split)
            with phase("vae.tiles", tiles=len(plan.tiles((H, W)))):
                if workers:
                    multi_device.run_tiles(workers, plan.tiles((H, W)), T, plan.slice_len,
                                           lambda w: tile_step(graph, stem_out, b, w.ctx, w.sink, layout),
                                           bar=bar, fault=o.fault, stage="decode")
                else:
                    _run_tiles(graph, stem_out, b, plan, ctx, sink, layout, bar, o.fault)
            del stem_out
        with phase("vae.copies"):
            out = sink.finish()
    with phase("vae.devices_released", devices=len(devices)):
        multi_device.finish(workers, "decode")
    bar.close()
    return out


def _plan(graph: DecoderGraph, shape, ctx: ExecContext, o: RunOptions, devices) -> Plan:
    budget_bytes = multi_device.shared_budget(devices, "decode", o.budget_bytes, ctx.device)
    plan = plan_decode(graph.up, tuple(shape[-2:]), shape[2], element_size(ctx.dtype), budget_bytes, o.tile, o.slice_len,
                       calibration=decode_calibration(graph.version))
    return multi_device.plan_for_devices(plan, graph.up, tuple(shape[-2:]), len(devices), element_size(ctx.dtype))


def decode_plan(vae, latent_shape, options: RunOptions | None = None, **option_changes) -> Plan:
    """The plan :func:`decode` makes for a latent of ``latent_shape`` with the same options."""
    o = RunOptions.of(options, **option_changes)
    ctx = o.context(find_module(vae))
    return _plan(decoder_graph(vae, o.kernels), latent_shape, ctx, o,
                 multi_device.devices_for(o, ctx, find_module(vae), "decode"))


def _stem(graph: DecoderGraph, z: torch.Tensor, plan: Plan, ctx: ExecContext, bar, fault, workers, split):
    """The stem output: split by rows over ``workers`` when ``split`` (stem_split.split_parts) is given,
    else (or if the split fails on any device) on the main device."""
    if split is not None and workers:
        try:
            out = stem_split.run_split_stem(split, z, workers, plan.slice_len, fault=fault)
        except stem_split.SplitFailed as exc:
            log.warning("wan_accel: the VAE stem split over %d devices failed (%s); the main device runs it",
                        len(workers), exc)
            note("vae.stem_split_failed", devices=len(workers), error=type(exc.__cause__).__name__)
            for w in workers:
                release_memory(w.device)
        else:
            for _ in range(slice_count(z.shape[2], plan.slice_len)):  # the one-device stem's steps
                bar.advance()
            return out
    return _run_stem(graph, z, plan, ctx, bar, fault)


def _run_stem(graph: DecoderGraph, z: torch.Tensor, plan: Plan, ctx: ExecContext, bar, fault):
    """Stem output for all frames, (T, C, h, w) in host memory (pinned when the device is CUDA)."""
    _, _, T, H, W = z.shape
    full = Rect.full((H, W))
    box = {}

    def step(f0, f1, state):
        x = z[:, :, f0:f1].to(ctx.device, ctx.dtype, non_blocking=True)
        y = graph.stem.run(x, full, full, (H, W), state, ctx)
        if "store" not in box:
            box["store"] = torch.empty((T, y.shape[1], H, W), dtype=ctx.dtype, pin_memory=ctx.device.type == "cuda")
        box["store"][f0:f1].copy_(y[0].transpose(0, 1), non_blocking=True)

    frame_loop(T, plan.slice_len, step, device=ctx.device, fault=fault, bar=bar, stage="stem")
    return box["store"]


def tile_step(graph: DecoderGraph, stem_out, b: int, ctx: ExecContext, sink: HostSink, layout: str):
    """The step ``tile_loop`` runs for video ``b``: one tile's slice of frames through the up path on
    ``ctx``'s device, streamed into ``sink``."""
    _, _, H, W = stem_out.shape
    size = (H, W)
    sf = graph.space_factor

    def step(rect, f0, f1, state):
        out_rect = rect.scale(sf)
        x = stem_out[f0:f1].to(ctx.device, non_blocking=True).transpose(0, 1).unsqueeze(0)
        if ctx.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        y = graph.up.run(x, Rect.full(size), out_rect, size, state, ctx)
        _emit(sink, y, b, out_frame(f0, graph.time_factor), out_rect, layout, full_width=out_rect.width == W * sf)

    return step


def _run_tiles(graph: DecoderGraph, stem_out, b: int, plan: Plan, ctx: ExecContext, sink, layout, bar, fault):
    T, _, H, W = stem_out.shape
    step = tile_step(graph, stem_out, b, ctx, sink, layout)
    tile_loop(plan.tiles((H, W)), T, plan.slice_len, step, device=ctx.device, fault=fault, bar=bar, stage="decode")


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
