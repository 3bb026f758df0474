"""The VAE kernels (vae_accel/kernels) against the engine's current ops, op by op and in a whole decode.

Per op, at the shapes one tile step really runs (recorded from the engine at the planner's default
plan): nearest 2x upsample + 3x3 conv against the sub-pixel conv and its parts (the phase conv as
conv3d and as conv2d, the interleave copy); RMS norm + SiLU eager, torch.compile'd (the engine's
WAN_ACCEL_FUSED_NORM path) and the Triton kernel, alone, after the residual add and in front of the
causal conv; cuDNN benchmark mode off and on; first call (Triton compile, cuDNN search) and warm.
Whole decode (Wan 2.1 VAE, random weights, bf16): the engine as is and with the kernels patched in
(each rewrite alone too), first call and warm, peak memory, PSNR against an fp32 decode, the top
kernels of torch.profiler, and the first decode of a fresh process. Writes JSON.

    python bench/vae_kernels.py --comfy /path/to/ComfyUI --out bench/results/vae_kernels_h200.json
    python bench/vae_kernels.py --small        # tiny model and video, runs on the CPU too
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile

import torch

from _common import Timer, error_stats, load_comfy, load_wan_accel, randomise_, write_json
from vae_kernels_micro import micro, record_step, sync

CONFIGS = {  # name -> KernelChoice fields (None: the engine as is)
    "engine": None,
    "kernels": {},
    "subpixel_only": {"norm_conv": False, "defer_residual": False},
    "norm_only": {"subpixel": False},
    "no_deferred_add": {"defer_residual": False},
}


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--comfy", help="ComfyUI checkout: its WanVAE module (else diffusers') and native decode as anchor")
    p.add_argument("--small", action="store_true", help="tiny model (base dim 8) and video (9 frames, 64x80)")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--size", default="1216x832")
    p.add_argument("--reps", type=int, default=10, help="timed repetitions per op")
    p.add_argument("--skip", default="", help="comma list of parts to skip: micro,decode,profile,fresh")
    p.add_argument("--keep-triton-cache", action="store_true", help="use Triton's cache as is (default: an empty one, so first calls compile)")
    p.add_argument("--first-call", help=argparse.SUPPRESS)  # internal: one decode in this fresh process
    p.add_argument("--out", default="bench/results/vae_kernels.json")
    a = p.parse_args()
    if a.small:
        a.frames, a.size, a.reps = 9, "64x80", 3
    return a


def build_model(a, dev, dtype):
    dim = 8 if a.small else 96
    if a.comfy:
        from vae_decode import comfy_wan21

        model = comfy_wan21(dim)
    else:
        from diffusers import AutoencoderKLWan

        model = randomise_(AutoencoderKLWan(base_dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                            temperal_downsample=[False, True, True]))
    return model.to(dev, dtype)


@contextlib.contextmanager
def kernels_patched(name: str, model):
    """The engine's decode with the kernels swapped in, as the integration would do it: the rewritten
    graph, the Triton norm as the context's ``norm_act``, and plans made on the original graph (the
    planner's memory model does not know the new ops yet)."""
    import wan_accel.vae_accel  # noqa: F401
    from wan_accel.vae_accel.kernels.norm_act import norm_act
    from wan_accel.vae_accel.kernels.rewrite import KernelChoice, accelerate_graph

    if CONFIGS[name] is None:
        yield
        return
    choice = KernelChoice(**CONFIGS[name])
    mod = sys.modules["wan_accel.vae_accel.decode"]
    saved = mod.decoder_graph, mod.plan_decode, mod.context_for
    graph, plan, context = saved

    def context_for(*args, **kw):
        ctx = context(*args, **kw)
        if choice.norm_conv:
            ctx.norm_act = norm_act
        return ctx

    mod.decoder_graph = lambda vae: accelerate_graph(graph(vae), choice)
    mod.plan_decode = lambda up, *args, **kw: plan(graph(model).up, *args, **kw)
    mod.context_for = context_for
    try:
        yield
    finally:
        mod.decoder_graph, mod.plan_decode, mod.context_for = saved


def run_decode(model, z, name, **kw):
    from wan_accel.vae_accel import decode

    with kernels_patched(name, model):
        return decode(model, z, progress=False, **kw)


# ------------------------------------------------------------------ whole decode


def to01(raw):
    return (raw.clamp(-1, 1) + 1) / 2


def decode_runs(model, z, ref01, dev, a, res):
    runs = {}

    def measure(label, name, warm_runs=2, **kw):
        rows = []
        for _ in range(1 + warm_runs):
            with Timer(dev) as t:
                out = run_decode(model, z, name, **kw)
            rows.append({"s": round(t.seconds, 3), "peak_gib": round(t.peak_gib, 3)})
        best = min(rows[1:], key=lambda r: r["s"]) if warm_runs else rows[0]
        runs[label] = {"first_call_s": rows[0]["s"], "warm_s": best["s"], "peak_gib": best["peak_gib"],
                       **{k: round(v, 5) for k, v in error_stats(to01(out), ref01).items()}}
        print(label, runs[label], flush=True)
        del out
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    modes = (False, True) if dev.type == "cuda" else (False,)
    for bench_mode in modes:
        torch.backends.cudnn.benchmark = bench_mode
        for name in ("engine", "kernels"):
            measure(f"{name}_cudnn_benchmark_{'on' if bench_mode else 'off'}", name)
    for name in CONFIGS:
        if name not in ("engine", "kernels"):
            measure(f"{name}_cudnn_benchmark_{'on' if modes[-1] else 'off'}", name, warm_runs=1)
    if dev.type == "cuda":
        measure("kernels_cudnn_benchmark_on_12gib_budget", "kernels", warm_runs=1, budget_bytes=12 * 2**30)
    torch.backends.cudnn.benchmark = False
    if a.comfy:
        import comfy.sd

        vae = comfy.sd.VAE(sd={k: v.float() for k, v in model.state_dict().items()})
        ref_bthwc = ref01.movedim(1, -1)
        rows = []
        for _ in range(3):
            with Timer(dev) as t:
                out = vae.decode(z)
            rows.append({"s": round(t.seconds, 3), "peak_gib": round(t.peak_gib, 3)})
        runs["native_VAE.decode"] = {"first_call_s": rows[0]["s"], "warm_s": min(r["s"] for r in rows[1:]),
                                     "peak_gib": rows[-1]["peak_gib"], "dtype": str(vae.vae_dtype),
                                     **{k: round(v, 5) for k, v in error_stats(out.reshape(ref_bthwc.shape), ref_bthwc).items()}}
        print("native", runs["native_VAE.decode"], flush=True)
    res["decode"] = runs


KERNEL_KINDS = (  # first match wins; names of CUDA kernels (cuDNN, ATen, Triton)
    ("triton_norm_act", ("norm_act_kernel",)),
    ("torch_compile", ("triton_",)),
    ("conv", ("conv", "xmma", "gemm", "cudnn", "cutlass", "implicit", "fprop", "sm90_", "sm80_")),
    ("cat", ("catarray", "cat_")),
    ("upsample", ("upsample", "nearest")),
    ("copy_layout", ("copy",)),
    ("reduce", ("reduce", "norm")),
    ("elementwise", ("elementwise",)),
)


def kind_of(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in low for k in keys)), "other")


def kernel_table(prof, limit=25):
    """Top kernels by GPU (or, on the CPU, op) self time, the total and the time per kind of kernel."""
    events = prof.key_averages()
    attr = "self_device_time_total" if any(getattr(e, "self_device_time_total", 0) for e in events) else "self_cpu_time_total"
    events = sorted(events, key=lambda e: getattr(e, attr), reverse=True)
    total = sum(getattr(e, attr) for e in events)
    top = [{"name": e.key[:120], "calls": e.count, "ms": round(getattr(e, attr) / 1e3, 2),
            "share": round(getattr(e, attr) / max(total, 1), 4)} for e in events[:limit]]
    kinds: dict = {}
    for e in events:
        if getattr(e, attr):
            kinds[kind_of(e.key)] = kinds.get(kind_of(e.key), 0) + getattr(e, attr) / 1e3
    return {"time": attr, "total_ms": round(total / 1e3, 1), "by_kind_ms": {k: round(v, 1) for k, v in kinds.items()}, "top": top}


def profiles(model, z, dev):
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    out = {}
    for bench_mode in ((False, True) if dev.type == "cuda" else (False,)):
        torch.backends.cudnn.benchmark = bench_mode
        for name in ("engine", "kernels"):
            run_decode(model, z, name)  # warm (shapes tuned, kernels compiled)
            with torch.profiler.profile(activities=acts) as prof:
                run_decode(model, z, name)
                sync(dev)
            label = f"{name}_cudnn_benchmark_{'on' if bench_mode else 'off'}"
            out[label] = kernel_table(prof)
            print(label, json.dumps(out[label]["top"][:8]), flush=True)
    torch.backends.cudnn.benchmark = False
    return out


# ------------------------------------------------------------------ first decode of a fresh process


def first_call_child(a, dev, dtype):
    """In the child process: build the model, decode once, print the seconds as a JSON line."""
    model = build_model(a, dev, dtype)
    z = latent(a)
    if a.first_call == "native":
        import comfy.sd

        vae = comfy.sd.VAE(sd={k: v.float() for k, v in model.state_dict().items()})
        fn = lambda: vae.decode(z)  # noqa: E731 - includes ComfyUI moving the weights to the GPU
    else:
        fn = lambda: run_decode(model, z, a.first_call)  # noqa: E731
    with Timer(dev) as t:
        fn()
    print(json.dumps({"s": round(t.seconds, 3), "peak_gib": round(t.peak_gib, 3)}))


def fresh_processes(a):
    runs, cold = {}, tempfile.mkdtemp(prefix="triton_cold_")
    plan = [("engine", None), ("kernels_empty_triton_cache", cold), ("kernels_warm_triton_cache", cold)]
    if a.comfy:
        plan.insert(0, ("native", None))
    for label, cache in plan:
        name = "kernels" if label.startswith("kernels") else label
        cmd = [sys.executable, os.path.abspath(__file__), "--first-call", name, "--frames", str(a.frames), "--size", a.size]
        cmd += (["--comfy", a.comfy] if a.comfy else []) + (["--small"] if a.small else [])
        env = dict(os.environ, **({"TRITON_CACHE_DIR": cache} if cache else {}))
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        runs[label] = json.loads(lines[-1]) if done.returncode == 0 and lines else {"error": done.stderr[-2000:]}
        print("fresh process", label, runs[label], flush=True)
    return runs


# ------------------------------------------------------------------ main


def latent(a):
    H, W = (int(v) for v in a.size.split("x"))
    T = (a.frames - 1) // 4 + 1
    return torch.randn(1, 16, T, H // 8, W // 8, generator=torch.Generator().manual_seed(a.frames))


def main():
    a = parse()
    if not a.keep_triton_cache and not a.first_call and "TRITON_CACHE_DIR" not in os.environ:
        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton_bench_")  # first calls really compile
    load_comfy(a.comfy)
    load_wan_accel()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if a.first_call:
        return first_call_child(a, dev, dtype)
    from wan_accel.vae_accel import build_decoder, decode
    from wan_accel.vae_accel.planner import plan_decode
    from wan_accel.vae_accel.runtime import default_budget, element_size

    skip = set(a.skip.split(","))
    kernel_log = CapturedLog()
    logging.getLogger("wan_accel").addHandler(kernel_log)
    logging.getLogger("wan_accel").setLevel(logging.INFO)
    res = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__,
           "dtype": str(dtype), "frames": a.frames, "size": a.size, "model": "comfy WanVAE" if a.comfy else "diffusers AutoencoderKLWan"}
    with contextlib.suppress(ImportError):
        import triton

        res["triton"] = triton.__version__
    model = build_model(a, dev, dtype)
    z = latent(a)
    _, _, T, h, w = z.shape
    plan = plan_decode(build_decoder(model).up, (h, w), T, element_size(dtype), default_budget(dev))
    res["plan"] = {"tile": [plan.tile_h, plan.tile_w], "slice": plan.slice_len, "est_gib": round(plan.est_bytes / 2**30, 3),
                   "budget_gib": None if plan.budget_bytes is None else round(plan.budget_bytes / 2**30, 2)}
    print("plan", res["plan"], flush=True)
    if "micro" not in skip:
        calls = record_step(lambda fault: run_decode(model, z, "engine", fault=fault))
        res["micro"] = {}
        for bench_mode in ((False, True) if dev.type == "cuda" else (False,)):
            torch.backends.cudnn.benchmark = bench_mode
            res["micro"][f"cudnn_benchmark_{'on' if bench_mode else 'off'}"] = micro(calls, dev, dtype, a.reps)
        torch.backends.cudnn.benchmark = False
    if "decode" not in skip:
        ref = build_model(a, dev, torch.float32)
        ref01 = to01(decode(ref, z, progress=False))
        del ref
        res["reference"] = "the engine's float32 decode (cuDNN may use TF32, torch's default)"
        decode_runs(model, z, ref01, dev, a, res)
        del ref01
    if "profile" not in skip:
        res["profile"] = profiles(model, z, dev)
    if "fresh" not in skip:
        res["fresh_process_first_decode"] = fresh_processes(a)
    res["kernel_log"] = kernel_log.lines  # a Triton kernel that failed here says so (and the torch path ran)
    write_json(a.out, res)


class CapturedLog(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        if "kernels" in record.getMessage():
            self.lines.append(record.getMessage())


if __name__ == "__main__":
    with torch.inference_mode():  # as ComfyUI runs nodes
        main()
