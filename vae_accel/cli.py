"""Decode a Wan latent with the engine; print the plan, time, peak memory and the error against an untiled decode.

With no arguments: a random-weight Wan 2.1 VAE of the real architecture and a small random latent, decoded
as two tiles and two slices so the comparison with the untiled decode checks a seam and the carried caches.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import torch

from . import options

PROG = "python -m wan_accel"
SPACE_FACTOR = 8  # the only VAE this command loads is the Wan 2.1 VAE
DEFAULT_TILE = options.min_tile_pixels(SPACE_FACTOR)
MAX_FRAMES = 1001
MAX_SIDE = 8192


class UsageError(Exception):
    """A bad command line or input file: one line that names the fix, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage + message would be two lines and its exit status
        raise UsageError(f"{message} (see --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__)
    p.add_argument("--vae", help="a ComfyUI-layout wan_2.1_vae.safetensors (default: random weights, no download)")
    p.add_argument("--latent", help="a ComfyUI .latent file (default: a random latent)")
    p.add_argument("--frames", type=int, default=5, help="video frames of the random latent, 1 + 4k (default 5)")
    p.add_argument("--size", default="64x128", help="HEIGHTxWIDTH in pixels of the random latent, multiples of 8 "
                                                    "(default 64x128)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--tile", type=int, default=DEFAULT_TILE,
                   help=f"largest tile side in image pixels, 0 for the planner's choice, else at least "
                        f"{DEFAULT_TILE} (default {DEFAULT_TILE}: the smallest, so even the default video is tiled)")
    p.add_argument("--slice", type=int, default=0,
                   help=f"latent frames per step after the first, 1 to {options.MAX_SLICE_FRAMES} (0: the planner)")
    p.add_argument("--max-vram-gb", type=float, default=0.0,
                   help="memory budget of the plan in GiB (0: a share of the free VRAM; no limit on the CPU)")
    p.add_argument("--no-reference", action="store_true", help="skip the untiled reference decode")
    p.add_argument("--out", help="save the frames as a .pt tensor (frames, H, W, 3) in [0, 1]")
    p.add_argument("--debug", action="store_true", help="print tracebacks")
    return p


def _check(a) -> None:
    """Every option's range, before anything slow happens."""
    problem = (options.tile_problem(a.tile, SPACE_FACTOR, name="--tile")
               or options.slice_problem(a.slice, name="--slice")
               or options.vram_problem(a.max_vram_gb, name="--max-vram-gb"))
    if problem:
        raise UsageError(problem)
    if not 1 <= a.frames <= MAX_FRAMES or (a.frames - 1) % 4:
        raise UsageError(f"--frames {a.frames}: Wan video has 1 + 4k frames; use 1, 5, 9, ... up to {MAX_FRAMES}")
    a.height, a.width = _size(a.size)
    try:
        device = torch.device(a.device)
    except RuntimeError:
        raise UsageError(f"--device {a.device!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: this PyTorch sees no CUDA GPU; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {a.device!r}: use cpu, cuda or cuda:N")
    for flag, path in (("--vae", a.vae), ("--latent", a.latent)):
        if path and not os.path.isfile(path):
            raise UsageError(f"{flag} {path}: no such file")
    if a.out and not os.path.isdir(os.path.dirname(os.path.abspath(a.out))):
        raise UsageError(f"--out {a.out}: its folder does not exist")


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        h, w = (int(v) for v in parts)
    except ValueError:
        raise UsageError(f"--size {text!r}: give HEIGHTxWIDTH in pixels, e.g. 64x128") from None
    if not (8 <= h <= MAX_SIDE and 8 <= w <= MAX_SIDE) or h % 8 or w % 8:
        raise UsageError(f"--size {text}: both sides must be multiples of 8 from 8 to {MAX_SIDE}")
    return h, w


def _load_latent(path: str) -> torch.Tensor:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        data = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise UsageError(f"--latent {path}: not a .latent (safetensors) file: {exc}") from exc
    if "latent_tensor" not in data:
        raise UsageError(f"--latent {path}: not a ComfyUI .latent file (no 'latent_tensor'); save one with Save Latent")
    z = data["latent_tensor"].float()
    if "latent_format_version_0" not in data:  # old files are stored scaled
        z = z / 0.18215
    return z


def _load_vae(a):
    from safetensors import SafetensorError

    from .models import load_wan_vae, random_wan_vae

    if not a.vae:
        return random_wan_vae("2.1")
    try:
        return load_wan_vae(a.vae)
    except (ValueError, OSError, RuntimeError, SafetensorError) as exc:
        raise UsageError(f"--vae {a.vae}: {exc}") from exc


def _run(a) -> int:
    from .decode import decode, decode_plan
    from .validate import BadLatent, check_latent

    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    if a.latent:
        z = _load_latent(a.latent)
        try:
            check_latent(z, 16)
        except BadLatent as exc:
            raise UsageError(f"--latent {a.latent}: {exc}") from exc
    else:
        z = torch.randn(1, 16, 1 + (a.frames - 1) // 4, a.height // 8, a.width // 8,
                        generator=torch.Generator().manual_seed(0))
    vae = _load_vae(a).to(device, dtype)
    plan_args = dict(device=device, dtype=dtype, tile=options.tile_latent(a.tile, SPACE_FACTOR),
                     slice_len=a.slice or None, budget_bytes=options.budget_bytes(a.max_vram_gb))
    plan = decode_plan(vae, tuple(z.shape), **plan_args)
    print(f"latent {tuple(z.shape)} -> decoding on {device} in {a.dtype}")
    print(f"plan: {plan.describe(tuple(z.shape[-2:]), z.shape[2], SPACE_FACTOR)}", flush=True)

    import psutil

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    out = decode(vae, z, layout="raw", **plan_args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    report = {"frames": out.shape[2], "height": out.shape[3], "width": out.shape[4],
              "seconds": round(time.perf_counter() - t0, 3)}
    if device.type == "cuda":
        report["peak_vram_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    report["rss_growth_gib"] = round((psutil.Process().memory_info().rss - rss0) / 2**30, 3)
    if not a.no_reference:
        with torch.inference_mode():
            ref = vae.decode(z.to(device, dtype), return_dict=False)[0].float().cpu()
        report["max_abs_diff_vs_untiled"] = float((out.clamp(-1, 1) - ref).abs().max())
    print(json.dumps(report, indent=1))
    if a.out:
        torch.save(out[0].clamp(-1, 1).add(1).mul(0.5).permute(1, 2, 3, 0).contiguous(), a.out)
        print(f"frames saved to {a.out}")
    return 0


def _say(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def main(argv=None) -> int:
    """Exit status: 0 done, 2 bad command line or input file, 1 the decode failed, 130 interrupted."""
    try:
        a = _parser().parse_args(argv)
    except UsageError as exc:
        _say(str(exc))
        return 2
    try:
        _check(a)
        return _run(a)
    except UsageError as exc:
        if a.debug:
            traceback.print_exc()
        _say(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line unless asked: the fix is in the message, not the stack
        if a.debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _say(f"{type(exc).__name__}: {first} (run with --debug for the traceback)")
        return 1

