"""Where the decode's GPU time goes: per-phase wall time, top CUDA kernels, planner estimate vs peak.

    python bench/profile_vae.py --comfy /path/to/ComfyUI [--tile N --slice K]
"""
from __future__ import annotations

import argparse
import time

import torch

from _common import Timer, load_comfy, load_wan_accel
from vae_decode import comfy_wan21


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--comfy", required=True)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--cudnn-benchmark", action="store_true")
    p.add_argument("--configs", default="0:2,38:2,76:2,0:1", help="tile:slice pairs (0 = whole frame)")
    a = p.parse_args()
    load_comfy(a.comfy)
    load_wan_accel()
    from wan_accel.telemetry import phases
    from wan_accel.vae_accel import build_decoder, decode
    from wan_accel.vae_accel.planner import estimate_bytes

    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = a.cudnn_benchmark  # measured: faster convs once warm, seconds of tuning per new tile shape
    m = comfy_wan21(96).to(dev, torch.bfloat16)
    up = build_decoder(m).up
    T = (a.frames - 1) // 4 + 1
    z = torch.randn(1, 16, T, 152, 104)
    decode(m, z[:, :, :3, :32, :32], progress=False)
    events = []
    phases.add_listener(events.append)
    for cfg in a.configs.split(","):
        tile, k = (int(v) for v in cfg.split(":"))
        tile = tile or None
        decode(m, z[:, :, :4], tile=tile, slice_len=k, progress=False)  # warm this shape
        events.clear()
        with Timer(dev) as t:
            decode(m, z, tile=tile, slice_len=k, progress=False)
        est = estimate_bytes(up, tile or 152, tile or 104, k, 2) / 2**30
        print(f"tile={tile} slice={k}: {t.seconds:.3f}s peak {t.peak_gib:.2f} GiB (extra {t.extra_gib:.2f}), estimate {est:.2f} GiB;",
              {e["name"]: round(e["seconds"], 3) for e in events if e["kind"] == "phase"}, flush=True)
    tile, k = (int(v) for v in a.configs.split(",")[0].split(":"))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA], with_stack=True) as prof:
        t0 = time.perf_counter()
        decode(m, z, tile=tile or None, slice_len=k, progress=False)
        torch.cuda.synchronize()
    print("profiled run", time.perf_counter() - t0)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=70))
    print(prof.key_averages(group_by_stack_n=4).table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=40, top_level_events_only=False))


if __name__ == "__main__":
    with torch.inference_mode():
        main()
