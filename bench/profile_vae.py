"""Where the VAE's time goes, ours (the default kernels path) beside ComfyUI's native decode/encode: one
warm call of each under torch's profiler, summed by kernel kind, the convolutions by shape with their
achieved TFLOP/s, the host ops that cost the most, and the gap between wall time and GPU-busy time.
``--variants`` times the engine with other options (bigger tiles, longer slices) warm in the same process;
``--fresh`` runs the first decode of a fresh process (Triton cache filled first) under cProfile, to show
what a first call pays on the host. Writes JSON after every part.

    . bench/gpu/setup.sh && python3 bench/profile_vae.py --out $OUT/profile_vae.json \
        --variants "decode21:tile=152;decode21:slice_len=2;decode22:tile=44" --fresh      # H200: ~3 min
    python bench/profile_vae.py --cpu-check        # tiny, CPU: the tool itself runs
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time

import torch

from _common import Timer, write_json
from vae_kernels import CPU_SIZE, DEFAULT_COMFY, WORKLOADS, build_module, inputs, start

# kernel-name fragments -> kind, first match wins (cuDNN/CUTLASS conv kernels carry many names)
KINDS = (
    ("norm_act", ("norm_act_kernel",)),
    ("conv", ("conv", "xmma", "cudnn", "implicit", "fprop", "cutlass", "sm90_", "sm80_", "nchwToNhwc", "nhwcToNchw",
              "wgrad", "dgrad", "gemm")),
    ("copy/layout", ("copy", "cat", "Memcpy", "Memset", "transpose", "permute", "contiguous")),
    ("upsample", ("upsample", "interpolate")),
    ("add/mul", ("add", "mul", "Add", "Mul")),
    ("attention", ("flash", "fmha", "attention", "softmax")),
    ("norm/silu (torch)", ("norm", "silu", "sigmoid", "rsqrt", "reduce", "sum")),
)


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--comfy", default=DEFAULT_COMFY, help="ComfyUI checkouts to try, comma separated ('none': engine only)")
    p.add_argument("--workloads", default="decode21,decode22,encode21")
    p.add_argument("--native", default="decode21", help="workloads whose native call is profiled too ('' for none)")
    p.add_argument("--variants", default="", help="'workload:opt=v,opt=v;...' engine options timed warm (RunOptions names, "
                                                  "budget_gib for budget_bytes)")
    p.add_argument("--fresh", action="store_true", help="cProfile the first decode21 of a fresh process")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--cpu-check", action="store_true", help="tiny sizes on the CPU: the tool runs end to end")
    p.add_argument("--fresh-child", help=argparse.SUPPRESS)
    p.add_argument("--out", default="bench/results/profile_vae.json")
    return p.parse_args()


def kind_of(name: str) -> str:
    for kind, parts in KINDS:
        if any(s in name for s in parts):
            return kind
    return "other"


def device_time(e) -> float:
    return getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0) or 0


def summarise(prof, wall_s: float, top: int) -> dict:
    """Kernel time by kind, the top kernels, convolutions by shape, host ops by self time."""
    events = prof.key_averages()
    kernels = [e for e in events if device_time(e) > 0 and e.device_type == torch.autograd.DeviceType.CUDA]
    kinds: dict[str, float] = {}
    for e in kernels:
        kinds[kind_of(e.key)] = kinds.get(kind_of(e.key), 0.0) + device_time(e) / 1e3
    busy_ms = sum(kinds.values())
    out = {
        "wall_s": round(wall_s, 3),
        "gpu_kernels_ms": round(busy_ms, 1),
        "gpu_idle_share": round(1 - busy_ms / 1e3 / wall_s, 3) if wall_s and busy_ms else None,
        "kinds_ms": {k: round(v, 1) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"name": e.key[:140], "kind": kind_of(e.key), "calls": e.count, "ms": round(device_time(e) / 1e3, 2)}
                        for e in sorted(kernels, key=device_time, reverse=True)[:top]],
    }
    by_shape = prof.key_averages(group_by_input_shape=True)
    convs = [e for e in by_shape if e.key in ("aten::conv3d", "aten::conv2d")]  # F.conv*: their kernels are children
    rows = []
    for e in convs:
        ms = (getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0)) / 1e3
        flops = getattr(e, "flops", 0) or 0
        rows.append({"shapes": str(e.input_shapes)[:160], "calls": e.count, "ms": round(ms, 2),
                     "tflops": round(flops / (ms / 1e3) / 1e12, 1) if ms and flops else None})
    rows.sort(key=lambda r: -r["ms"])
    out["conv_total_ms"] = round(sum(r["ms"] for r in rows), 1)
    out["conv_distinct_shapes"] = len(rows)
    out["convs_by_shape"] = rows[:top]
    host = sorted((e for e in events if e.device_type == torch.autograd.DeviceType.CPU), key=lambda e: e.self_cpu_time_total,
                  reverse=True)
    out["host_self_ms"] = round(sum(e.self_cpu_time_total for e in host) / 1e3, 1)
    out["top_host_ops"] = [{"name": e.key[:100], "calls": e.count, "self_ms": round(e.self_cpu_time_total / 1e3, 2)}
                           for e in host[:top]]
    return out


def profiled(dev, fn, top: int) -> dict:
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with torch.profiler.profile(activities=acts, record_shapes=True, with_flops=True) as prof:
        t0 = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    return summarise(prof, wall, top)


def engine_call(kind, model, x, **opts):
    from wan_accel.vae_accel import decode, encode

    if "budget_gib" in opts:
        opts["budget_bytes"] = int(float(opts.pop("budget_gib")) * 2**30)
    if kind == "decode":
        return lambda: decode(model, x, layout="comfy", progress=False, **opts)
    return lambda: encode(model, x[None], layout="comfy", progress=False, **opts)


def setup(name, a, dev, dtype, comfy):
    kind, version, frames, h, w = WORKLOADS[name]
    if a.cpu_check:
        frames, h, w = CPU_SIZE
    fp32 = build_module(version, comfy)
    x, _ = inputs(kind, version, frames, h, w)
    native = None
    if comfy:
        import comfy.sd

        native = comfy.sd.VAE(sd=fp32.state_dict())
    model = copy.deepcopy(fp32).to(dev, dtype)
    return kind, model, native, x


def native_call(kind, native, x):
    return (lambda: native.decode(x)) if kind == "decode" else (lambda: native.encode(x))


def best_of(dev, fn, n: int) -> dict:
    fn()  # this configuration's shapes planned, compiled and cached once
    runs = []
    for _ in range(n):
        with Timer(dev) as t:
            fn()
        runs.append({"s": round(t.seconds, 3), "peak_gib": round(t.peak_gib, 3)})
    return min(runs, key=lambda r: r["s"])


def parse_variants(spec: str) -> list[tuple[str, dict]]:
    """'workload:opt=v,opt=v;...' -> [(workload, {opt: value})]; a bad item stops the bench naming the form."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        name, _, opts = item.partition(":")
        kv = {}
        try:
            if name not in WORKLOADS:
                raise ValueError(f"unknown workload {name!r}")
            for pair in filter(None, opts.split(",")):
                k, _, v = pair.partition("=")
                kv[k] = float(v) if k == "budget_gib" else (v.lower() == "true" if v.lower() in ("true", "false") else int(v))
        except ValueError as exc:
            raise SystemExit(f"--variants {item!r}: {exc}; expected 'workload:opt=value,...' with a workload of "
                             f"{', '.join(WORKLOADS)} and integer, true/false or (budget_gib) decimal values")
        out.append((name, kv))
    return out


def fresh_child(a, dev, dtype, comfy):
    """In a fresh process: everything built untimed, then the first engine decode under cProfile."""
    kind, model, _, x = setup("decode21", a, dev, dtype, comfy)
    fn = engine_call(kind, model, x)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    prof.disable()
    wall = time.perf_counter() - t0
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(45)
    tottime = io.StringIO()
    pstats.Stats(prof, stream=tottime).sort_stats("tottime").print_stats(25)
    print(json.dumps({"wall_s": round(wall, 3), "cumulative": text.getvalue()[-9000:], "tottime": tottime.getvalue()[-5000:]}))


def fresh(a) -> dict:
    cache = tempfile.mkdtemp(prefix="triton_fresh_")
    out = {}
    for label in ("fill_triton_cache", "warm_triton_cache"):
        cmd = [sys.executable, os.path.abspath(__file__), "--fresh-child=decode21", f"--comfy={a.comfy}"]
        cmd += ["--cpu-check"] if a.cpu_check else []
        done = subprocess.run(cmd, env=dict(os.environ, TRITON_CACHE_DIR=cache), capture_output=True, text=True, timeout=300)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        out[label] = json.loads(lines[-1]) if done.returncode == 0 and lines else {"error": (done.stdout + done.stderr)[-3000:]}
        if label == "fill_triton_cache" and "wall_s" in out[label]:
            out[label] = {"wall_s": out[label]["wall_s"], "tottime": out[label]["tottime"]}
        print("fresh", label, json.dumps(out[label])[:4000], flush=True)
    return out


def main():
    a = parse()
    variants: dict[str, list] = {}
    for name, kv in parse_variants(a.variants):  # before ComfyUI boots: a typo stops at once
        variants.setdefault(name, []).append(kv)
    started = time.perf_counter()
    res = {"args": vars(a), "torch": torch.__version__}
    comfy, dev, dtype = start(a, res)
    if a.fresh_child:
        return fresh_child(a, dev, dtype, comfy)
    res["device"] = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    for name in a.workloads.split(","):
        kind, model, native, x = setup(name, a, dev, dtype, comfy)
        row = res.setdefault(name, {})
        ours = engine_call(kind, model, x)
        row["ours_warm"] = best_of(dev, ours, 1)
        row["ours_profile"] = profiled(dev, ours, a.top)
        if native is not None and name in a.native.split(","):
            row["native_warm"] = best_of(dev, native_call(kind, native, x), 1)
            row["native_profile"] = profiled(dev, native_call(kind, native, x), a.top)
        for kv in variants.get(name, []):
            label = ",".join(f"{k}={v}" for k, v in kv.items())
            try:
                row.setdefault("variants", {})[label] = best_of(dev, engine_call(kind, model, x, **kv), 1)
            except torch.OutOfMemoryError:
                row.setdefault("variants", {})[label] = {"oom": True}
            print(name, label, row["variants"][label], flush=True)
        del model, native
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        res["total_s"] = round(time.perf_counter() - started, 1)
        write_json(a.out, res)
    if a.fresh:
        res["fresh_first_decode21"] = fresh(a)
    res["total_s"] = round(time.perf_counter() - started, 1)
    write_json(a.out, res)


if __name__ == "__main__":
    with torch.inference_mode(), contextlib.suppress(KeyboardInterrupt):
        main()
