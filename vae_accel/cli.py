"""Decode a Wan latent with the engine; print time, peak memory and the error against an untiled decode.

With no arguments: a random-weight Wan 2.1 VAE of the real architecture and a random latent.
"""
from __future__ import annotations

import argparse
import json
import time

import psutil
import torch

from .decode import decode
from .models import load_wan_vae, random_wan_vae


def _args(argv):
    p = argparse.ArgumentParser(prog="python -m wan_accel", description=__doc__)
    p.add_argument("--vae", help="wan_2.1_vae.safetensors (default: random weights, no download)")
    p.add_argument("--latent", help="a ComfyUI .latent file (default: random latent)")
    p.add_argument("--frames", type=int, default=5, help="output frames of the random latent (1 + 4k)")
    p.add_argument("--size", default="128x128", help="HEIGHTxWIDTH in pixels of the random latent")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--tile", type=int, default=0, help="tile size in latent pixels (0: planner)")
    p.add_argument("--slice", type=int, default=0, help="latent frames per step (0: planner)")
    p.add_argument("--max-vram-gb", type=float, default=0, help="memory budget for the plan (0: free VRAM)")
    p.add_argument("--no-reference", action="store_true", help="skip the untiled reference decode")
    p.add_argument("--out", help="save the frames as a .pt tensor (frames, H, W, 3) in [0, 1]")
    return p.parse_args(argv)


def _load_latent(path: str) -> torch.Tensor:
    from safetensors.torch import load_file

    data = load_file(path)
    if "latent_tensor" not in data:
        raise SystemExit(f"{path}: not a ComfyUI .latent file (no 'latent_tensor')")
    z = data["latent_tensor"].float()
    if "latent_format_version_0" not in data:  # old files are stored scaled
        z = z / 0.18215
    return z


def main(argv=None) -> int:
    a = _args(argv)
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    vae = (load_wan_vae(a.vae) if a.vae else random_wan_vae("2.1")).to(device)
    if dtype != torch.float32:
        vae = vae.to(dtype)
    if a.latent:
        z = _load_latent(a.latent)
    else:
        h, w = (int(v) for v in a.size.lower().split("x"))
        z = torch.randn(1, 16, 1 + (a.frames - 1) // 4, h // 8, w // 8, generator=torch.Generator().manual_seed(0))
    print(f"latent {tuple(z.shape)} -> decoding on {device} in {a.dtype}")

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    out = decode(vae, z, layout="raw", device=device, tile=a.tile or None, slice_len=a.slice or None,
                 budget_bytes=int(a.max_vram_gb * 2**30) or None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    report = {"frames": out.shape[2], "height": out.shape[3], "width": out.shape[4], "seconds": round(seconds, 3)}
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
