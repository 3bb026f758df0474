"""The VAE as it runs in the real graph: after a sampler, with the diffusion model still loaded. Stock
``VAE.decode`` / ``VAE.encode`` against the same VAE through ``WanAccelVAEPatch``, ComfyUI started as its
main.py starts it (0.33: Dynamic VRAM on; ``--legacy``: off), on a roomy card and on emulated cards.

    python bench/vae_after_sampler.py --comfy /tmp/comfy-0.33.0 --out vae.json [--cases roomy,16,resident2.5]

Each case runs in its own child process (a card is emulated from before ComfyUI starts, ``card.py``):
``roomy`` (the whole device), ``N`` (a card of N GiB), ``residentX`` (the whole device, then, after the
sampler, a filler leaves only X GiB free beside the loaded expert: a resident model ComfyUI cannot evict,
harsher than a real card; the target case "VAE alone with a resident expert, 2.5 GB free"). In each: the
Wan 2.1 VAE (and ``--wan22``: the 2.2 VAE) loads as VAELoader loads it, a random Wan 14B-shaped i2v expert
(full width, ``--layers`` blocks, fp8 on disk, ``models.py``) loads as UNETLoader fp8_e4m3fn loads it and
samples ``--sampler-steps`` steps of the video's latent; then each op (stock decode, ours decode, stock
encode, ours encode) runs ``--reps`` times (rep 0 = first call), each starting with the expert loaded as
the sampler left it. Per op: seconds, torch's peak allocated, the device's peak memory in use (sampled:
it sees comfy-aimdo's weights too), quality against an fp32 reference (decode: PSNR of the frames;
encode: relative error of the latent; the references come from a first child on the whole device and are
cached), and the expert's loaded MB before and after (``expert_evicted``). Ratios stock / ours per case.
The JSON is rewritten after every case.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import card as cards
import comfy_boot

comfy_boot.before_torch(sys.argv[1:])  # before any torch import (models, _common)
import models
from _common import error_stats, load_wan_accel, write_json
from vae_encode import i2v_video, rel_err

GIB = 2**30
VAES = {"2.1": ("wan_2.1_vae.safetensors", 16, 8, (1216, 832)), "2.2": (models.VAE22, 48, 16, (704, 1280))}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfy", required=True, help="ComfyUI checkout (0.33 for Dynamic VRAM; 0.8.0 runs legacy)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", default="roomy,resident2.5,16,12,24,32",
                    help="in run order: roomy, N (an N GiB card), residentX (X GiB free beside the loaded expert)")
    ap.add_argument("--legacy", action="store_true", help="ComfyUI's --disable-dynamic-vram")
    ap.add_argument("--wan22", action="store_true", help="also the Wan 2.2 VAE at 81x1280x704")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--layers", type=int, default=10, help="expert blocks (real: 40)")
    ap.add_argument("--dim", type=int, default=5120)
    ap.add_argument("--sampler-steps", type=int, default=1)
    ap.add_argument("--reps", type=int, default=2, help="calls per op (the first pays first-call costs)")
    ap.add_argument("--models", default=str(Path(tempfile.gettempdir()) / "wan_accel_bench_models_vae"))
    ap.add_argument("--cpu-check", action="store_true", help="tiny CPU run of this script (64x64, 5 frames)")
    ap.add_argument("--ours-gb", default="",
                    help="also run ours with these node budgets (max_vram_gb, comma-separated): ops ours<N>_decode ...")
    ap.add_argument("--profile", default="",
                    help="folder: torch.profiler tables of each ours op's last rep (top ops by self CPU and device time)")
    cards.add_arguments(ap)
    ap.add_argument("--case", help=argparse.SUPPRESS)  # one case, in a child process
    opts = ap.parse_args(argv)
    if opts.cpu_check:
        opts.frames, opts.layers, opts.dim, opts.reps = 5, 1, 256, 1
    return opts


def case_card(case: str) -> float:
    return 0.0 if case in ("roomy", "ref") or case.startswith("resident") else float(case)


def main(argv=None) -> int:
    opts = parse_args(argv)
    if opts.case:
        return run_case(opts)
    out: dict = {"config": {k: v for k, v in vars(opts).items() if k not in ("out", "case")}, "cases": {}}
    child = [sys.executable, str(Path(__file__).resolve())] + [a for a in (argv or sys.argv[1:])]
    t0 = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).with_name("models.py")), "--comfy", opts.comfy, "--out", opts.models,
           "--dim", str(opts.dim), "--layers", str(opts.layers), "--rank", "4"] + (["--vae22"] if opts.wan22 else [])
    out["models"] = json.loads(subprocess.run(cmd + (["--device", "cpu"] if opts.cpu_check else []), check=True,
                                              capture_output=True, text=True).stdout.splitlines()[-1])
    for case in ["ref"] + opts.cases.split(","):
        case_out = Path(opts.out).with_suffix(f".{case}.json")
        done = subprocess.run(child + ["--case", case, "--out", str(case_out)], capture_output=True, text=True)
        sys.stderr.write(done.stderr[-4000:])
        out["cases"][case] = (json.loads(case_out.read_text()) if case_out.exists()
                              else {"error": f"exit {done.returncode}: {done.stderr[-1500:]}"})
        case_out.unlink(missing_ok=True)
        out["elapsed_s"] = round(time.perf_counter() - t0, 1)
        write_json(opts.out, out)
    return 0


def run_case(opts) -> int:
    import torch

    cuda = torch.cuda.is_available() and not opts.cpu_check
    card = cards.Card(case_card(opts.case)).start(cuda)
    boot = comfy_boot.boot(opts.comfy, cpu=not cuda, dynamic_vram=not opts.legacy, card_total_bytes=card.total_bytes)
    load_wan_accel()
    import comfy.model_management as mm
    import comfy.sd
    import comfy.utils

    dev = mm.get_torch_device()
    res = {"case": opts.case, "comfy_boot": boot, "device": torch.cuda.get_device_name() if cuda else "cpu"}
    ref_dir = Path(opts.models) / "references"
    with torch.inference_mode():
        for version in ["2.1"] + (["2.2"] if opts.wan22 else []):
            file, channels, factor, (h, w) = VAES[version]
            if opts.cpu_check:
                h, w = 64, 64
            sd = comfy.utils.load_torch_file(str(Path(opts.models) / "vae" / file))
            T = (opts.frames - 1) // 4 + 1
            z = torch.randn(1, channels, T, h // factor, w // factor, generator=torch.Generator().manual_seed(1))
            video = i2v_video(opts.frames, h, w)
            ref_path = ref_dir / f"{version}_{opts.frames}x{h}x{w}.pt"
            if opts.case == "ref":
                res[version] = make_reference(comfy.sd.VAE(sd=sd, dtype=torch.float32), z, video, ref_path, dev)
                continue
            ref = torch.load(ref_path)
            res[version] = run_ops(opts, card, comfy.sd.VAE(sd=sd), z, video, ref, dev, cuda)
            res["card"] = card.describe()
            write_json(opts.out, res)
    card.release()
    write_json(opts.out, res)
    return 0


def make_reference(vae32, z, video, path: Path, dev) -> dict:
    """fp32 decode (frames in [0, 1], stored fp16) and fp32 encode of the same inputs, on the whole device."""
    import torch

    # every weight in float32 on the device: under Dynamic VRAM the VAE keeps its stored (bf16) weights and
    # casts them per call, and a plain module call would meet a float32 input with a bf16 bias
    m = vae32.first_stage_model.to(device=dev, dtype=torch.float32)
    t0 = time.perf_counter()
    frames = ((m.decode(z.to(dev)).float().clamp(-1, 1) + 1) / 2).movedim(1, -1).reshape(-1, *video.shape[1:])
    latent = m.encode(video.permute(3, 0, 1, 2)[None].to(dev) * 2 - 1).float()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"frames": frames.half().cpu(), "latent": latent.cpu()}, path)
    return {"reference": str(path), "s": round(time.perf_counter() - t0, 1)}


def load_expert(opts):
    """The high-noise expert as UNETLoader (weight_dtype fp8_e4m3fn) loads it, and a sampler run on it."""
    import comfy.sd
    import nodes
    import torch

    path = Path(opts.models) / "diffusion_models" / "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"
    options = {} if opts.cpu_check else {"dtype": torch.float8_e4m3fn}
    return comfy.sd.load_diffusion_model(str(path), model_options=options), nodes


def run_ops(opts, card, vae, z, video, ref, dev, cuda) -> dict:
    import comfy.model_management as mm
    import torch
    from bench_nodes import random_conditioning
    from wan_accel.nodes.vae_nodes import WanAccelVAEPatch

    expert, nodes = load_expert(opts)
    cond = random_conditioning(0, 16 if opts.cpu_check else 512)
    t0 = time.perf_counter()
    nodes.common_ksampler(expert, 0, opts.sampler_steps, 1.0, "euler", "simple", cond, cond,
                          {"samples": torch.zeros(z.shape[0], 16, *z.shape[2:]) if z.shape[1] == 16
                           else torch.zeros(1, 16, z.shape[2], z.shape[3] * 2, z.shape[4] * 2)})
    row: dict = {"sampler_s": round(time.perf_counter() - t0, 2), "expert_mb": round(expert.model_size() / 2**20)}
    resident = opts.case.startswith("resident")
    patched = WanAccelVAEPatch.execute(vae).args[0]
    budgets = {f"ours{gb}": WanAccelVAEPatch.execute(vae, max_vram_gb=float(gb)).args[0]
               for gb in filter(None, opts.ours_gb.split(","))}

    def restore():
        """The state the sampler left: the expert loaded (and in the resident case, X GiB free beside it)."""
        if resident and cuda:
            card.fill_to(None)
        mm.load_models_gpu([expert])
        if resident and cuda:
            row["filler"] = card.fill_to(float(opts.case[len("resident"):]))

    ops = {"stock_decode": lambda: vae.decode(z), "ours_decode": lambda: patched.decode(z)}
    ops.update({f"{k}_decode": (lambda p=p: p.decode(z)) for k, p in budgets.items()})
    ops.update({"stock_encode": lambda: vae.encode(video), "ours_encode": lambda: patched.encode(video)})
    ops.update({f"{k}_encode": (lambda p=p: p.encode(video)) for k, p in budgets.items()})
    for rep in range(opts.reps):
        for name, fn in ops.items():
            restore()
            before = expert.loaded_size()
            r = timed_op(fn, cuda, card)
            r["expert_loaded_mb"] = [round(before / 2**20), round(expert.loaded_size() / 2**20)]
            r["expert_evicted"] = expert.loaded_size() < before - 2**20
            out = r.pop("out", None)
            if out is not None and name.endswith("decode"):
                r["psnr_vs_fp32"] = round(error_stats(out.reshape(ref["frames"].shape), ref["frames"].float())["psnr_db"], 2)
            elif out is not None:
                r["rel_err_vs_fp32"] = round(rel_err(out, ref["latent"]), 5)
            row[f"{name}_{rep}"] = r
            print(opts.case, name, rep, r, file=sys.stderr, flush=True)
            del out
    if opts.profile and cuda:  # one more call of each of ours, profiled: its seconds are not compared
        for name, fn in ops.items():
            if not name.startswith("stock"):
                restore()
                r = timed_op(fn, cuda, card, Path(opts.profile) / f"{opts.case}_{name}.txt")
                r.pop("out", None)
                row[f"{name}_profiled"] = r
    last = opts.reps - 1
    for op in ("decode", "encode"):
        s = row[f"stock_{op}_{last}"].get("s")
        for ours in ["ours"] + list(budgets):
            o = row[f"{ours}_{op}_{last}"].get("s")
            row[f"{op}_speedup" if ours == "ours" else f"{ours}_{op}_speedup"] = round(s / o, 3) if s and o else None
    return row


def profiled(fn, path: Path):
    """``fn`` under torch.profiler; its top ops by self CPU time and by device time go to ``path``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        out = fn()
        torch.cuda.synchronize()
    table = prof.key_averages()
    path.parent.mkdir(parents=True, exist_ok=True)
    by_device = "self_device_time_total" if hasattr(table[0], "self_device_time_total") else "self_cuda_time_total"
    path.write_text(table.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60) + "\n\n"
                    + table.table(sort_by=by_device, row_limit=30, max_name_column_width=60))
    return out


def timed_op(fn, cuda: bool, card, profile_path: Path | None = None) -> dict:
    import gc

    import torch

    if profile_path is not None:
        fn = (lambda f=fn: profiled(f, profile_path))
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    sampler = cards.DeviceMemorySampler(torch) if cuda else None
    t0 = time.perf_counter()
    from wan_accel.telemetry.recorder import Recorder

    recorder = Recorder()  # the telemetry's own session: the op's phases and the engine's plans
    try:
        with recorder.session("bench.vae"):
            if sampler:
                with sampler:
                    out = fn()
                    torch.cuda.synchronize()
            else:
                out = fn()
    except Exception as exc:  # an out-of-memory stock path is a result, not a crash
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}", "s": None}
    r = {"s": round(time.perf_counter() - t0, 3), "out": out}
    node = recorder.last_run["nodes"][0]
    phases: dict = {}
    for p in node.get("phases", []):
        phases[p["name"]] = round(phases.get(p["name"], 0.0) + p["seconds"], 3)
    if phases:
        r["phases_s"] = phases
    if node.get("vae_plan"):
        r["vae_plan"] = node["vae_plan"]
    if profile_path is not None:
        r["profiled"] = True  # its seconds include the profiler's cost
    if cuda:
        r["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
        r["device_peak_used_gib"] = sampler.peak_used_gib(card)
    return r


if __name__ == "__main__":
    raise SystemExit(main())
