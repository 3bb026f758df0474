"""What the VAE kernels buy on the default path: ComfyUI's native VAE against our engine without and with
its kernels (vae_accel/kernels, on by default), in one process, for the three calls of a Wan 2.2 i2v run.

Workloads (random weights of the real architectures, bf16 on CUDA):
  decode21  Wan 2.1 VAE decode, 81 frames 1216x832;   decode22  Wan 2.2 VAE decode, 81 frames 704x1280;
  encode21  Wan 2.1 VAE i2v encode (start image + grey frames), 81 frames 1216x832.
Per configuration (native ``comfy.sd.VAE``, ours ``kernels=False``, ours default): first call in this process
and best warm call (seconds), peak VRAM over the call, PSNR against the fp32 module's own decode/encode (for
latents: peak = the reference's range), which path the norm kernel took (Triton, or torch and why) and the
kernels' log lines; ratios against native. ``fresh``: the first decode of a fresh process (Wan 2.1 decode:
native, ours plain, ours with an empty and with a warm Triton cache, ours after the warm-up at load; each of ours
then runs ``--fresh-then``'s first calls; every call lists the norm kernel variants it compiled). ``profile``: top CUDA kernels of one
warm default decode. Writes JSON after every part (a run cut short keeps what ran).

ComfyUI is started the way main.py does (bench/comfy_boot.py: comfy-aimdo first where the release has it);
if a checkout cannot be imported the next one in ``--comfy`` is tried in a fresh process, and with none
the engine runs alone on diffusers' AutoencoderKLWan (no native anchor; the JSON says why).

    . bench/gpu/setup.sh && python3 bench/vae_kernels.py --out $OUT/vae_kernels.json          # H200: < 6 min
    python bench/vae_kernels.py --cpu-check --comfy /path/to/ComfyUI                         # tiny, CPU, checks exactness
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time

import torch

from _common import Timer, load_wan_accel, randomise_, write_json

DEFAULT_COMFY = "/tmp/comfy-0.33.0,/tmp/comfy-0.8.0"
WORKLOADS = {  # name -> (kind, VAE version, frames, height, width); --cpu-check shrinks them
    "decode21": ("decode", "2.1", 81, 1216, 832),
    "decode22": ("decode", "2.2", 81, 704, 1280),
    "encode21": ("encode", "2.1", 81, 1216, 832),
}
CPU_SIZE = (5, 32, 32)
# --cpu-check: fp32 ours vs the fp32 module, raw [-1, 1] scale. The real widths (384 channels) sum more fp32
# roundings in other orders than the tests' small models do (tests/test_vae_kernels.py: 1e-5): the plain ops
# already differ by ~1e-5 there; a wrong tap, phase or frame differs by ~1e-1.
EXACT = 5e-5


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--comfy", default=DEFAULT_COMFY, help="ComfyUI checkouts to try, comma separated ('none': engine only)")
    p.add_argument("--parts", default="decode21,decode22,encode21,fresh", help="comma list of workloads, fresh, profile")
    p.add_argument("--warm", type=int, default=2, help="warm calls per configuration after the first")
    p.add_argument("--budget-s", type=float, default=320, help="skip parts that would start after this many seconds")
    p.add_argument("--cpu-check", action="store_true", help="tiny sizes on the CPU in fp32, one warm call, no time budget; "
                                                             "fails unless ours is exact")
    p.add_argument("--first-call", help=argparse.SUPPRESS)  # internal: "workload:config", one call in this fresh process
    p.add_argument("--then", help=argparse.SUPPRESS)  # internal: workloads the fresh child runs after its timed call
    p.add_argument("--fresh-then", default="decode22,encode21",
                   help="in each fresh process of ours, these workloads' first calls after the Wan 2.1 decode ('' none)")
    p.add_argument("--fresh-only", help="comma list of fresh-process labels to run (default: all)")
    p.add_argument("--out", default="bench/results/vae_kernels.json")
    a = p.parse_args()
    if a.cpu_check:
        a.warm, a.budget_s = min(a.warm, 1), math.inf
    return a


# ------------------------------------------------------------------ ComfyUI, or not


def start_comfy(a, res) -> bool:
    """Boot the first checkout of ``a.comfy``; on failure re-run this bench with the rest of the list."""
    paths = [p for p in a.comfy.split(",") if p and p != "none"]
    if not paths:
        return False
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    from comfy_boot import boot

    try:
        info = boot(paths[0], cpu=a.cpu_check or not torch.cuda.is_available())
    except Exception as exc:  # a missing comfy-aimdo, a torch ComfyUI refuses: say so and try the next one
        reason = f"{paths[0]}: {type(exc).__name__}: {exc}"
        print("ComfyUI unavailable:", reason, flush=True)
        failed = os.environ.get("WAN_ACCEL_BENCH_COMFY_FAILED", "")
        env = dict(os.environ, WAN_ACCEL_BENCH_COMFY_FAILED=(failed + "\n" + reason).strip())
        argv, skip = [], False
        for arg in sys.argv[1:]:
            if skip or arg.startswith("--comfy"):
                skip = arg == "--comfy"  # its value is the next word
                continue
            argv.append(arg)
        rest = ",".join(paths[1:]) or "none"
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *argv, f"--comfy={rest}"], env)
    res["comfyui"] = {"path": paths[0], **info}
    return True


def start(a, res) -> tuple[bool, torch.device, torch.dtype]:
    """ComfyUI (or not: ``a.comfy``), this package, and the device and dtype the VAE benches run on
    (bf16 on CUDA; float32 on the CPU, or with ``a.cpu_check``)."""
    comfy = start_comfy(a, res)
    load_wan_accel()
    dev = torch.device("cuda" if torch.cuda.is_available() and not a.cpu_check else "cpu")
    return comfy, dev, torch.bfloat16 if dev.type == "cuda" else torch.float32


def build_module(version: str, comfy: bool) -> torch.nn.Module:
    """The VAE's module tree at its real widths, random weights (ComfyUI's classes, else diffusers')."""
    if comfy:
        if version == "2.1":
            import comfy.ldm.wan.vae as wv

            m = wv.WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                          temperal_downsample=[False, True, True])
        else:
            import comfy.ldm.wan.vae2_2 as wv

            m = wv.WanVAE(dim=160, dec_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                          temperal_downsample=[False, True, True])
    else:
        from diffusers import AutoencoderKLWan

        extra = {} if version == "2.1" else dict(decoder_base_dim=256, is_residual=True, patch_size=2, in_channels=12,
                                                 out_channels=12, scale_factor_spatial=16)
        m = AutoencoderKLWan(base_dim=96 if version == "2.1" else 160, z_dim=16 if version == "2.1" else 48,
                             dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True], **extra)
    return randomise_(m)


def module_call(m, kind: str, x: torch.Tensor) -> torch.Tensor:
    """The module's own decode (raw pixels) or encode (latent mean): the fp32 reference."""
    if hasattr(m, "post_quant_conv"):  # diffusers
        return m.decode(x, return_dict=False)[0] if kind == "decode" else m.encode(x).latent_dist.mean
    return m.decode(x) if kind == "decode" else m.encode(x)


# ------------------------------------------------------------------ one workload


def inputs(kind: str, version: str, frames: int, h: int, w: int):
    """(engine input in ComfyUI's layout, module input in the raw layout)."""
    if kind == "decode":
        c, f = (16, 8) if version == "2.1" else (48, 16)
        z = torch.randn(1, c, (frames - 1) // 4 + 1, h // f, w // f, generator=torch.Generator().manual_seed(frames))
        return z, z
    video = torch.full((frames, h, w, 3), 0.5)  # as WanImageToVideo builds it: the start image, then grey
    video[0] = torch.rand(h, w, 3, generator=torch.Generator().manual_seed(0))
    return video, video.permute(3, 0, 1, 2)[None] * 2 - 1


def as_raw(kind: str, out: torch.Tensor, ref_shape) -> torch.Tensor:
    """A result in the reference's layout: raw pixels (B, 3, T, H, W) in [-1, 1] or the latent."""
    if kind == "encode":
        return out.float().reshape(ref_shape)
    frames01 = out.float().reshape(ref_shape[0], ref_shape[2], ref_shape[3], ref_shape[4], ref_shape[1])
    return frames01.movedim(-1, 1) * 2 - 1


def accuracy(kind: str, out: torch.Tensor, ref: torch.Tensor) -> dict:
    d = out.float() - ref.float()
    mse = d.pow(2).mean().item()
    peak = 2.0 if kind == "decode" else (ref.max() - ref.min()).item()  # [-1, 1] pixels, or the latent's range
    return {"max_abs": d.abs().max().item(), "psnr_db": round(10 * math.log10(peak**2 / mse), 2) if mse else math.inf}


def configurations(kind, model, native, x_engine):
    from wan_accel.vae_accel import decode, encode

    run = decode if kind == "decode" else encode
    configs = {}
    if native is not None:
        configs["native"] = (lambda: native.decode(x_engine)) if kind == "decode" else (lambda: native.encode(x_engine))
    batch = x_engine if kind == "decode" else x_engine[None]
    configs["ours_plain"] = lambda: run(model, batch, layout="comfy", kernels=False, progress=False)
    configs["ours_kernels"] = lambda: run(model, batch, layout="comfy", progress=False)  # the default path
    # cuDNN's algorithm search on top (its first call in this process pays the search per conv shape)
    configs["ours_autotune"] = lambda: run(model, batch, layout="comfy", progress=False, conv_autotune=True)
    return configs


def timed_call(dev, fn):
    try:
        with Timer(dev) as t:
            out = fn()
    except torch.OutOfMemoryError:
        return None, {"oom": True}
    # peak: all allocated at the call's high point (models included); extra: above what was allocated before it
    return out, {"s": round(t.seconds, 3), "peak_gib": round(t.peak_gib, 3), "extra_gib": round(t.extra_gib, 3)}


def run_workload(name, a, dev, dtype, comfy, log_lines):
    from wan_accel.vae_accel import decode_plan
    from wan_accel.vae_accel.kernels import availability

    kind, version, frames, h, w = WORKLOADS[name]
    if a.cpu_check:
        frames, h, w = CPU_SIZE
    row = {"kind": kind, "vae": version, "frames": frames, "size": f"{h}x{w}"}
    fp32 = build_module(version, comfy)
    x_engine, x_module = inputs(kind, version, frames, h, w)
    with torch.inference_mode():
        ref = module_call(fp32.to(dev), kind, x_module.to(dev)).float().cpu()
        if kind == "decode":
            ref = ref.clamp(-1, 1)  # pixels, as every VAE node hands them on
    row["reference"] = f"the fp32 module's own {kind}" + (" (cuDNN TF32 as torch's default allows)" if dev.type == "cuda" else "")
    model = copy.deepcopy(fp32).to(dev, dtype)  # ours runs the bare module, as the patched VAE hands it over
    native = None
    if comfy:
        import comfy.sd

        native = comfy.sd.VAE(sd=fp32.cpu().state_dict())
        row["native_dtype"] = str(native.vae_dtype)
    del fp32
    if kind == "decode":
        plan = decode_plan(model, x_engine.shape)
        row["plan"] = {"tile": [plan.tile_h, plan.tile_w], "slice": plan.slice_len, "est_gib": round(plan.est_bytes / 2**30, 3)}
    configs = configurations(kind, model, native, x_engine)
    calls = {c: [] for c in configs}
    for rep in range(1 + a.warm):
        for c, fn in configs.items():
            availability.reset_counts()
            first_log = len(log_lines)
            out, stats = timed_call(dev, fn)
            calls[c].append(stats)
            if rep == 0:
                row[c] = {"first_call": stats, "norm_paths": availability.paths_taken(), "log": log_lines[first_log:]}
                if out is not None:
                    row[c].update(accuracy(kind, as_raw(kind, out, ref.shape), ref))
            del out
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    for c, rows in calls.items():
        warm = [r for r in rows[1:] if "s" in r]
        row[c]["warm"] = min(warm, key=lambda r: r["s"]) if warm else None
        print(name, c, json.dumps(row[c]), flush=True)
    if a.cpu_check:  # the tiled, sliced engine on the kernels too (the default plan is one tile on the CPU)
        from wan_accel.vae_accel import decode, encode

        batch = x_engine if kind == "decode" else x_engine[None]
        tile = 2 if version == "2.1" else 1  # several tiles with halos at the tiny size
        out = (decode if kind == "decode" else encode)(model, batch, layout="comfy", tile=tile, slice_len=1, progress=False)
        row["ours_kernels_tiled"] = accuracy(kind, as_raw(kind, out, ref.shape), ref)
    ratios(row)
    return row


def ratios(row):
    native = row.get("native")
    if not native:
        return
    for c in ("ours_plain", "ours_kernels", "ours_autotune"):
        mine = row.get(c, {})
        for when in ("first_call", "warm"):
            if native.get(when) and mine.get(when) and "s" in native[when] and "s" in mine[when]:
                mine[f"speedup_vs_native_{when}"] = round(native[when]["s"] / mine[when]["s"], 3)


# ------------------------------------------------------------------ first call of a fresh process


def cubins() -> int:
    """Binaries in Triton's on-disk cache: how many kernel variants this machine has compiled."""
    root = os.environ.get("TRITON_CACHE_DIR", "")
    return sum(f.endswith(".cubin") for _, _, files in os.walk(root) for f in files) if root else -1


def norm_variants() -> set[str]:
    """The norm kernel's variants compiled or loaded in this process: Triton's in-memory cache keys (every
    argument's dtype and specialisation, the constants and options), so a call's new ones say what it compiled."""
    from wan_accel.vae_accel.kernels import availability

    module = availability.triton_module("norm_act_triton")
    if module is None:
        return set()
    keys = set()
    for entry in getattr(module.kernel(), "device_caches", {}).values():
        keys.update(map(str, entry[0]))
    return keys


def first_call_child(a, dev, dtype, comfy):
    """In the child: build everything untimed, then time one call of one configuration; one JSON line.
    ``+warmup``: the kernel warm-up starts first, as ComfyUI starts it when it loads our nodes, and the call
    comes once it has ended; the JSON says how long it took and what the call still compiled."""
    name, config = a.first_call.split(":")
    warm = config.endswith("+warmup")
    config = config.removesuffix("+warmup")
    started = time.perf_counter()
    if warm:
        from wan_accel.nodes import kernel_warmup  # what ComfyUI's loading of the package runs

        kernel_warmup.setup()
    kind, version, frames, h, w = WORKLOADS[name]
    if a.cpu_check:
        frames, h, w = CPU_SIZE
    fp32 = build_module(version, comfy)
    x_engine, _ = inputs(kind, version, frames, h, w)
    model = copy.deepcopy(fp32).to(dev, dtype)
    native = None
    if comfy:
        import comfy.sd

        native = comfy.sd.VAE(sd=fp32.state_dict())
    fn = configurations(kind, model, native, x_engine)[config]
    extra = {}
    if warm:
        from wan_accel.vae_accel import warmup

        thread = warmup._running  # noqa: SLF001 - bench introspection
        extra = {"warmup_running_when_built": thread is not None and thread.is_alive(),
                 "built_after_s": round(time.perf_counter() - started, 3)}
        if thread is not None:
            thread.join()  # as in ComfyUI, where the first decode comes minutes after start-up (warmup.wait would stop it)
    before, variants = cubins(), norm_variants()
    _, stats = timed_call(dev, fn)  # native's includes ComfyUI moving the weights to the GPU, as in a real first run
    if warm:
        extra["warmup"] = dict(warmup.last_result)
        extra["variants_from_warmup"] = sorted(variants)
    extra["variants_new_in_call"] = sorted(norm_variants() - variants)
    print(json.dumps({**stats, **extra, "cubins_compiled_in_call": cubins() - before, "cubins_total": cubins()}))
    for then in filter(None, (a.then or "").split(",")):  # the other workloads' first calls, ours only
        kind, version, frames, h, w = WORKLOADS[then]
        if a.cpu_check:
            frames, h, w = CPU_SIZE
        model = build_module(version, comfy).to(dev, dtype)
        fn = configurations(kind, model, None, inputs(kind, version, frames, h, w)[0])[config]
        before, variants = cubins(), norm_variants()
        _, stats = timed_call(dev, fn)
        print(json.dumps({"then": then, **stats, "variants_new_in_call": sorted(norm_variants() - variants),
                          "cubins_compiled_in_call": cubins() - before}))
        del model, fn


def fresh_processes(a, comfy):
    runs, cache, cold = {}, tempfile.mkdtemp(prefix="triton_cold_"), tempfile.mkdtemp(prefix="triton_cold_warmed_")
    plan = ([("native", "native", None)] if comfy else []) + [
        ("ours_plain", "ours_plain", None), ("ours_kernels_empty_triton_cache", "ours_kernels", cache),
        ("ours_kernels_warm_triton_cache", "ours_kernels", cache),
        ("ours_autotune_warm_triton_cache", "ours_autotune", cache)]
    if comfy:  # the warm-up ComfyUI starts when it loads the nodes (nodes/kernel_warmup.py), on an empty cache
        plan.append(("ours_kernels_empty_triton_cache_warmup_at_load", "ours_kernels+warmup", cold))
    if a.fresh_only:
        plan = [row for row in plan if row[0] in a.fresh_only.split(",")]
    for label, config, triton_cache in plan:
        cmd = [sys.executable, os.path.abspath(__file__), f"--first-call=decode21:{config}", f"--comfy={a.comfy}"]
        cmd += ["--cpu-check"] if a.cpu_check else []
        cmd += [f"--then={a.fresh_then}"] if a.fresh_then and config != "native" else []
        env = dict(os.environ, **({"TRITON_CACHE_DIR": triton_cache} if triton_cache else {}))
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        lines = [json.loads(ln) for ln in done.stdout.splitlines() if ln.startswith("{")]
        first = [ln for ln in lines if "then" not in ln]
        runs[label] = first[0] if done.returncode == 0 and first else {"error": (done.stdout + done.stderr)[-2000:]}
        runs[label].update({f"then_{ln['then']}": ln for ln in lines if "then" in ln})
        print("fresh process decode21", label, runs[label], flush=True)
    return runs


# ------------------------------------------------------------------ profile


def profile_default_decode(dev, dtype, comfy):
    from wan_accel.vae_accel import decode

    kind, version, frames, h, w = WORKLOADS["decode21"]
    model = build_module(version, comfy).to(dev, dtype)
    z, _ = inputs(kind, version, frames, h, w)
    decode(model, z, progress=False)  # warm: shapes tuned, kernels compiled
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        decode(model, z, progress=False)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    events = prof.key_averages()
    attr = "self_device_time_total" if any(getattr(e, "self_device_time_total", 0) for e in events) else "self_cpu_time_total"
    events = sorted(events, key=lambda e: getattr(e, attr), reverse=True)
    total = sum(getattr(e, attr) for e in events)
    return {"time": attr, "total_ms": round(total / 1e3, 1),
            "top": [{"name": e.key[:120], "calls": e.count, "ms": round(getattr(e, attr) / 1e3, 2)} for e in events[:25]]}


# ------------------------------------------------------------------ main


class KernelLog(logging.Handler):
    """The engine's log lines (a kernel that failed to compile says so there)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def main():
    a = parse()
    started = time.perf_counter()
    if not a.first_call and "TRITON_CACHE_DIR" not in os.environ:
        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton_bench_")  # first calls really compile
    res = {"args": vars(a), "torch": torch.__version__}
    failed = os.environ.get("WAN_ACCEL_BENCH_COMFY_FAILED")
    if failed:
        res["comfyui_failed"] = failed.splitlines()
    comfy, dev, dtype = start(a, res)
    if a.first_call:
        return first_call_child(a, dev, dtype, comfy)
    res["device"] = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    res["dtype"] = str(dtype)
    with contextlib.suppress(ImportError):
        import triton

        res["triton"] = triton.__version__
    if not comfy:
        res["native"] = "no ComfyUI: engine only, no native anchor"
        try:
            import diffusers  # noqa: F401
        except ImportError:
            res["error"] = "neither ComfyUI nor diffusers importable: no Wan VAE module tree to run"
            write_json(a.out, res)
            sys.exit(2)
    log = KernelLog()
    logging.getLogger("wan_accel").addHandler(log)
    logging.getLogger("wan_accel").setLevel(logging.INFO)
    if dev.type == "cuda":  # cuDNN and cuBLAS handles exist before any configuration's first call
        torch.nn.functional.conv3d(torch.zeros(1, 8, 2, 8, 8, device=dev, dtype=dtype), torch.zeros(8, 8, 1, 3, 3, device=dev, dtype=dtype))
        torch.cuda.synchronize()
    res["skipped"] = []
    for part in a.parts.split(","):
        if time.perf_counter() - started > a.budget_s:
            res["skipped"].append(part)
            continue
        t0 = time.perf_counter()
        if part in WORKLOADS:
            res[part] = run_workload(part, a, dev, dtype, comfy, log.lines)
        elif part == "fresh":
            res["fresh_process_first_decode21"] = fresh_processes(a, comfy)
        elif part == "profile":
            res["profile_default_decode21"] = profile_default_decode(dev, dtype, comfy)
        else:
            raise SystemExit(f"unknown part {part!r}: the parts are {', '.join([*WORKLOADS, 'fresh', 'profile'])}")
        res.setdefault("part_seconds", {})[part] = round(time.perf_counter() - t0, 1)
        res["total_s"] = round(time.perf_counter() - started, 1)
        write_json(a.out, res)
    res["total_s"] = round(time.perf_counter() - started, 1)
    write_json(a.out, res)
    if a.cpu_check:
        check_exact(res)


def check_exact(res):
    """--cpu-check: ours (fp32, CPU) must equal the fp32 module, kernels on and off, tiled and whole."""
    bad = []
    for name in WORKLOADS:
        row = res.get(name)
        if not row:
            continue
        for c in ("ours_plain", "ours_kernels", "ours_kernels_tiled"):
            err = row[c]["max_abs"] if "max_abs" in row.get(c, {}) else None
            if err is None or err > EXACT:
                bad.append(f"{name} {c}: max abs {err}")
    if bad:
        raise SystemExit("not exact: " + "; ".join(bad))
    print("cpu-check: exact (<= %g) on every workload, kernels on and off" % EXACT)


if __name__ == "__main__":
    with torch.inference_mode():  # as ComfyUI runs nodes
        main()
