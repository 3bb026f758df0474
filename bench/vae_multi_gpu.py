"""Wan VAE decode on one GPU against the same decode spread over every visible GPU, in one run.

Wan 2.1 VAE (dim 96) at 81 and 161 frames of 1216x832 and the Wan 2.2 VAE at 81 frames of 1280x704,
random weights of the real architecture, bf16. Per case and per side: seconds of the first call (the
other GPUs' first touch: weights copied, kernels chosen) and a warm call, peak memory allocated per
device, the plan's tiles; the multi-GPU frames' max abs difference from the one-GPU frames (0 when both
run the same tiles: ``same_tiles``), the stem on the first GPU (the default). ``--split-stem`` adds a
third side: the tiles dealt as before and the stem split by rows over the GPUs too (RunOptions.split_stem,
the default until the fast kernels made the stem 0.08 s), with its difference from one GPU. Each call also
says where its time went (phases, and per device its tiles, seconds and thread CPU seconds); ``--tune``
then repeats the first case with each knob of TUNINGS. Writes JSON.

    python bench/vae_multi_gpu.py --comfy /path/to/ComfyUI --out bench/results/vae_multi_gpu.json
    python bench/vae_multi_gpu.py --cpu-check --out /tmp/vae_multi_gpu_cpu.json   # tiny, two CPU workers

The VAE modules are ComfyUI's (``--comfy``: only its module files are used, no server, no executor) or
diffusers' where no ComfyUI is given.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from _common import load_comfy, load_wan_accel, randomise_, write_json

# (height, width) as bench/vae_decode.py runs them
CASES = [("wan2.1", 81, (1216, 832)), ("wan2.1", 161, (1216, 832)), ("wan2.2", 81, (704, 1280))]


def wan_vae(version: str, comfy: bool, tiny: bool) -> torch.nn.Module:
    if comfy:
        if version == "wan2.1":
            import comfy.ldm.wan.vae as wv

            m = wv.WanVAE(dim=8 if tiny else 96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                          temperal_downsample=[False, True, True])
        else:
            import comfy.ldm.wan.vae2_2 as wv

            m = wv.WanVAE(dim=8 if tiny else 160, dec_dim=12 if tiny else 256, z_dim=48, dim_mult=[1, 2, 4, 4],
                          num_res_blocks=2, attn_scales=[], temperal_downsample=[False, True, True])
    else:
        from wan_accel.vae_accel.models import random_wan_vae

        sizes = (dict(base_dim=8) if version == "wan2.1" else dict(base_dim=8, decoder_base_dim=12)) if tiny else {}
        m = random_wan_vae("2.1" if version == "wan2.1" else "2.2", **sizes)
    return randomise_(m)


def synced(devices) -> None:
    for d in dict.fromkeys(devices):
        if d.type == "cuda":
            torch.cuda.synchronize(d)


def call(fn, devices) -> tuple[torch.Tensor, dict]:
    """One timed call: seconds, the peak memory allocated on each device (GiB), and where the time went:
    the engine's phases (stem, tiles, copies, the other devices' set-up and release, seconds summed) and
    each device's share (tiles, seconds, CPU seconds of its thread)."""
    import gc

    from wan_accel.telemetry import phases

    events: list = []
    phases.add_listener(events.append)
    gc.collect()
    for d in dict.fromkeys(devices):
        if d.type == "cuda":
            torch.cuda.synchronize(d)
            torch.cuda.reset_peak_memory_stats(d)
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        out = fn()
        synced(devices)
    finally:
        phases.remove_listener(events.append)
    seconds = time.perf_counter() - t0
    peaks = {str(d): round(torch.cuda.max_memory_allocated(d) / 2**30, 3) for d in dict.fromkeys(devices)
             if d.type == "cuda"}
    spent: dict = {}
    for e in events:
        if e["kind"] == "phase" and e["name"].startswith("vae."):
            spent[e["name"]] = round(spent.get(e["name"], 0.0) + e["seconds"], 3)
    shares = [{k: e[k] for k in ("device", "tiles", "steps", "seconds", "cpu_seconds") if k in e}
              for e in events if e["name"] == "vae.device"]
    return out, {"s": round(seconds, 3), "process_cpu_s": round(time.process_time() - cpu0, 3), "peak_gib": peaks,
                 "phases_s": spent, **({"devices": shares} if shares else {})}


WARM_CALLS = 2  # warm calls per side; the fastest is kept (one GPU's time moved by up to 3 % between calls)


def best(fn, devices) -> dict:
    """The fastest of WARM_CALLS warm calls, with every call's seconds."""
    calls = [call(fn, devices)[1] for _ in range(WARM_CALLS)]
    fastest = min(calls, key=lambda c: c["s"])
    return {**fastest, "all_s": [c["s"] for c in calls]}


def run_case(version: str, frames: int, size, model, devices, dtype, tiny: bool, split_stem: bool = False) -> dict:
    from wan_accel.vae_accel import decode, decode_plan

    H, W = size
    sf = 8 if version == "wan2.1" else 16
    channels = 16 if version == "wan2.1" else 48
    T = (frames - 1) // 4 + 1
    z = torch.randn(1, channels, T, H // sf, W // sf, generator=torch.Generator().manual_seed(frames))
    main = devices[0]
    extra = {"tile": 4} if tiny else {}  # the tiny latent fits one tile; pin small ones so there are several
    row = {"vae": version, "frames": frames, "height_width": [H, W], "latent": list(z.shape), "devices": [str(d) for d in devices]}
    one_plan = decode_plan(model, z.shape, dtype=dtype, **extra)
    many_plan = decode_plan(model, z.shape, dtype=dtype, devices=devices, **extra)
    row["plan_one"] = one_plan.describe((H // sf, W // sf), T, sf)
    row["plan_many"] = many_plan.describe((H // sf, W // sf), T, sf)
    row["same_tiles"] = one_plan.tiles((H // sf, W // sf)) == many_plan.tiles((H // sf, W // sf))

    def one():
        return decode(model, z, dtype=dtype, progress=False, **extra)

    def many():
        return decode(model, z, dtype=dtype, progress=False, devices=devices, split_stem=False, **extra)

    ref, row["one_first"] = call(one, [main])
    row["one_warm"] = best(one, [main])
    out, row["many_first"] = call(many, devices)
    row["many_warm"] = best(many, devices)
    row["max_abs_diff"] = (out.float() - ref.float()).abs().max().item()
    row["bitwise_equal"] = bool(torch.equal(out, ref))
    row["speedup_warm"] = round(row["one_warm"]["s"] / row["many_warm"]["s"], 3)
    row["speedup_first"] = round(row["one_first"]["s"] / row["many_first"]["s"], 3)
    if split_stem:
        def split():
            return decode(model, z, dtype=dtype, progress=False, devices=devices, split_stem=True, **extra)

        out, row["split_first"] = call(split, devices)
        row["split_warm"] = best(split, devices)
        row["split_max_abs_diff"] = (out.float() - ref.float()).abs().max().item()
        row["split_speedup_warm"] = round(row["one_warm"]["s"] / row["split_warm"]["s"], 3)
    print(row, flush=True)
    return row


TUNINGS = {  # name -> what it changes for both sides: ("switch", Python's thread switch interval) or ("option", name, value)
    "switch_interval_0.5ms": ("switch", 0.0005),
    "slice_len_2": ("option", "slice_len", 2),
    "layout_comfy": ("option", "layout", "comfy"),  # what the nodes ask for: one copy per frame, not per channel
}
# A pure-Python thread beside a one-GPU decode was tried too: it stalled the decode past 150 s (alone 2.1 s),
# so the decode's thread needs the GIL all the time (bench/results/vae_multi_gpu_tune_2xh200.json).


def tune(version: str, frames: int, size, model, devices, dtype) -> dict:
    """The first case's one-GPU and all-GPU warm calls with each knob of TUNINGS set alone (best of
    WARM_CALLS each, in this process, after the case itself warmed everything up)."""
    from wan_accel.vae_accel import decode

    sf, channels = (8, 16) if version == "wan2.1" else (16, 48)
    H, W = size
    z = torch.randn(1, channels, (frames - 1) // 4 + 1, H // sf, W // sf, generator=torch.Generator().manual_seed(frames))
    out = {}
    for label in ["default", *TUNINGS]:
        knob = TUNINGS.get(label, ("none",))
        options, switch = {}, sys.getswitchinterval()
        if knob[0] == "switch":
            sys.setswitchinterval(knob[1])
        elif knob[0] == "option":
            options[knob[1]] = knob[2]
        try:
            one = best(lambda: decode(model, z, dtype=dtype, progress=False, **options), devices[:1])
            many = best(lambda: decode(model, z, dtype=dtype, progress=False, devices=devices, **options), devices)
        finally:
            sys.setswitchinterval(switch)
        row = {"one_s": one["s"], "one_phases_s": one["phases_s"], "many_s": many["s"],
               "speedup": round(one["s"] / many["s"], 3), "many_phases_s": many["phases_s"],
               "many_devices": many.get("devices"), "many_peak_gib": many["peak_gib"]}
        out[label] = row
        print("tune", label, row, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--comfy", help="ComfyUI checkout whose VAE modules to use (default: diffusers')")
    p.add_argument("--out", default="bench/results/vae_multi_gpu.json")
    p.add_argument("--cpu-check", action="store_true", help="tiny CPU run: small VAEs, two CPU workers, float32")
    p.add_argument("--split-stem", action="store_true", help="also the stem split by rows over the GPUs")
    p.add_argument("--tune", action="store_true", help="then the first case again with each knob of TUNINGS")
    p.add_argument("--tune-only", action="store_true", help="--tune without the cases before it")
    a = p.parse_args()
    load_comfy(a.comfy)
    load_wan_accel()
    if a.cpu_check:
        devices = [torch.device("cpu")] * 2
        dtype = torch.float32
        cases = [("wan2.1", 9, (88, 104)), ("wan2.2", 9, (80, 112))]
        res = {"device": "cpu (two worker threads)", "torch": torch.__version__}
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --cpu-check for the tiny CPU version")
        devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        dtype = torch.bfloat16
        cases = CASES
        res = {"device": [torch.cuda.get_device_name(d) for d in devices], "torch": torch.__version__}
        if len(devices) < 2:
            res["note"] = "one GPU visible: the multi-GPU side is the one-GPU run"
    res["modules"] = "comfyui" if a.comfy else "diffusers"
    res["runs"] = []
    models = {}
    t0 = time.perf_counter()
    for version, frames, size in [] if a.tune_only else cases:
        if version not in models:
            models.clear()  # one full-size VAE at a time on the main GPU
            models[version] = wan_vae(version, bool(a.comfy), a.cpu_check).to(devices[0], dtype)
        res["runs"].append(run_case(version, frames, size, models[version], devices, dtype, a.cpu_check, a.split_stem))
        write_json(a.out, res)  # a run cut short keeps what ran
    if a.tune or a.tune_only:
        version, frames, size = cases[0]
        models = {version: wan_vae(version, bool(a.comfy), a.cpu_check).to(devices[0], dtype)}
        res["tune"] = {"case": f"{version} {frames} frames {size[0]}x{size[1]}",
                       **tune(version, frames, size, models[version], devices, dtype)}
    res["total_s"] = round(time.perf_counter() - t0, 1)
    write_json(a.out, res)


if __name__ == "__main__":
    main()
