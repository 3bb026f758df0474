"""Benchmark the attention backends at Wan 2.x shapes on a GPU; writes JSON.

    python bench/attention.py --out results.json [--comfy PATH_TO_COMFYUI] [--shapes 14b,480p,720p]
                              [--reps 3] [--model-blocks 8] [--deadline-s 330]

Per shape (B=1, 40 heads, head dim 128, bf16, q/k/v in ComfyUI's (B, L, H*D) layout): every
backend available here, ms (mean of --reps calls after one warm-up, CUDA events), TFLOP/s
(4*L*L*H*d / t), error against a float32 SDPA reference on 1024 query rows spread over the
sequence (cosine, relative L2, max abs), peak memory; what ``auto`` picked, its one-off tuning time
and its steady-state time against the best single backend; with --comfy, ComfyUI's own default
attention function as the anchor and the override's overhead (ComfyUI's function with and without
an ``sdpa`` override that runs the same kernel, interleaved). --model-blocks N: a Wan 14B forward
(random weights, full width, N blocks) with comfy_default vs auto.

Over 400 lines on purpose: one GPU command must time, verify and rank every backend at every shape
and write one JSON; split, the parts could not share the in-process anchors and deadline.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

SHAPES = {  # name: (frames, height, width) of the video; tokens = latent frames * (h/16) * (w/16)
    "14b": ("81x1216x832", 21 * 76 * 52),
    "480p": ("81x832x480", 21 * 52 * 30),
    "720p": ("81x1280x720", 21 * 80 * 45),
    "tiny": ("(self-test)", 512),  # --device cpu --shapes tiny: checks this script without a GPU
}
DEV = torch.device("cuda")


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()
HEADS, HEAD_DIM = 40, 128


def load_wan_accel():
    """This checkout as ``wan_accel``, through the shared loader (tools/package_loader.py)."""
    from _common import load_wan_accel as load

    return load()


def cuda_time(fn, reps: int) -> tuple[float, object]:
    if DEV.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(reps):
            out = fn()
        return (time.perf_counter() - t0) * 1e3 / reps, out
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    out = None
    for _ in range(reps):
        out = fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps, out


def wall(fn) -> tuple[float, object]:
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return (time.perf_counter() - t0) * 1e3, out


class Bench:
    def __init__(self, args):
        self.args = args
        self.t0 = time.perf_counter()
        self.res: dict = {"args": vars(args)}
        self.out_path = Path(args.out)
        self.out_path.parent.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.args.deadline_s - (time.perf_counter() - self.t0)

    def save(self):
        self.out_path.write_text(json.dumps(self.res, indent=1, default=str))

    def log(self, *a):
        print(f"[{time.perf_counter() - self.t0:7.1f}s]", *a, flush=True)


def env_info(wa) -> dict:
    from wan_accel.attention import backends as B

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    if DEV.type == "cuda":
        info.update(device=torch.cuda.get_device_name(), capability=list(torch.cuda.get_device_capability()))
    for mod in ("triton", "sageattention", "cudnn", "flash_attn", "xformers", "comfy_kitchen"):
        try:
            m = importlib.import_module(mod)
            info[mod] = getattr(m, "__version__", "present")
        except Exception as exc:
            info[mod] = f"absent ({type(exc).__name__})"
    try:
        import cudnn
        info["cudnn_frontend_backend_version"] = cudnn.backend_version()
    except Exception:
        pass
    info["backends"] = {n: (B.get(n).unavailable_reason() or "available") for n in B.names(False)}
    return info


def bench_shape(b: Bench, name: str, comfy_attn) -> dict:
    from wan_accel.attention import AttnCall, AttentionOverride, AutoTuner
    from wan_accel.attention import backends as B
    from wan_accel.attention import verify as V

    video, L = SHAPES[name]
    flops = 4 * L * L * HEADS * HEAD_DIM
    r: dict = {"video": video, "L": L, "heads": HEADS, "head_dim": HEAD_DIM, "dtype": "bfloat16", "backends": {}}
    g = torch.Generator(device=DEV).manual_seed(0)
    q, k, v = (torch.randn(1, L, HEADS * HEAD_DIM, device=DEV, dtype=torch.bfloat16, generator=g) for _ in range(3))
    call = AttnCall.from_args((q, k, v, HEADS), {})
    t_ref, (idx, ref) = wall(lambda: V.reference_rows(call, 1024))
    r["reference"] = {"rows": int(idx.numel()), "ms": t_ref}
    b.log(name, "L", L, "reference", f"{t_ref:.0f} ms")

    def measure(label, fn, reps):
        if DEV.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if DEV.type == "cuda" else 0
        first_ms, out = wall(fn)
        if first_ms > 2000:
            reps = 1
        ms, out = cuda_time(fn, reps)
        if out.shape != q.shape:
            raise RuntimeError(f"{label}: output shape {tuple(out.shape)} != {tuple(q.shape)}")
        vd = V.compare(AttnCall.from_args((out, out, out, HEADS), {}).q, idx, ref)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if DEV.type == "cuda" else None
        del out
        return {"ms": ms, "first_call_ms": first_ms, "tflops": flops / (ms * 1e-3) / 1e12, "cosine": vd.cosine,
                "rel_l2": vd.rel_error, "max_abs": vd.max_abs, "finite": vd.finite, "peak_extra_gib": peak,
                "passes_default_verify": vd.ok, "reps": reps}

    wanted = b.args.backends.split(",") if b.args.backends else B.names(False)
    for bname in wanted:
        be = B.get(bname)
        reason = be.reason_not_to_run(call)
        if bname == "sdpa_math" and L > 4096:
            reason = reason or "skipped: materialises a 40 x L x L score matrix (hundreds of GiB)"
        if reason:
            r["backends"][bname] = {"skipped": reason}
            continue
        if b.left() < 60:
            r["backends"][bname] = {"skipped": "bench deadline"}
            continue
        try:
            r["backends"][bname] = m = measure(bname, lambda: call.finish(be.run(call)),
                                               1 if bname == "sub_quad" else b.args.reps)
            b.log(f"  {bname:15s} {m['ms']:8.2f} ms {m['tflops']:6.1f} TFLOP/s cos {m['cosine']:.6f} "
                  f"rel {m['rel_l2']:.4f} (first call {m['first_call_ms']:.0f} ms)")
        except Exception as exc:
            r["backends"][bname] = {"error": f"{type(exc).__name__}: {str(exc)[:600]}"}
            b.log(f"  {bname:15s} ERROR {type(exc).__name__}: {str(exc)[:300]}")
            traceback.print_exc()
        empty_cache()
        b.save()

    timed = {n: v["ms"] for n, v in r["backends"].items() if "ms" in v and v["passes_default_verify"]}
    if timed:
        best = min(timed, key=timed.get)
        r["best_single"] = {"backend": best, "ms": timed[best]}

    # auto: one-off tuning, then steady state; with the default thresholds and, optionally, relaxed ones
    variants = [("auto", V.DEFAULT_MIN_COSINE, V.DEFAULT_MAX_REL_ERROR)]
    if b.args.relaxed_cosine:
        variants.append(("auto_relaxed", b.args.relaxed_cosine, b.args.relaxed_rel))
    for label, min_cos, max_rel in variants:
        if b.left() < 40:
            r[label] = {"skipped": "bench deadline"}
            continue
        try:
            tuner = AutoTuner(reps=3)
            ov = AttentionOverride("auto", fallback="sdpa", tuner=tuner, label=f"bench-{name}",
                                   min_cosine=min_cos, max_rel_error=max_rel)

            def via_override(ov=ov):
                return ov(must_not_run, q, k, v, heads=HEADS, transformer_options={}, _inside_attn_wrapper=True)

            tune_ms, _ = wall(via_override)
            ms, out = cuda_time(via_override, b.args.reps)
            vd = V.compare(AttnCall.from_args((out, out, out, HEADS), {}).q, idx, ref)
            del out
            key = next(iter(tuner.choices))
            picked = tuner.choices[key]
            r[label] = {"min_cosine": min_cos, "max_rel_error": max_rel, "picked": picked,
                        "first_call_incl_tuning_ms": tune_ms, "ms": ms, "tuning_s": tuner.tune_seconds[key],
                        "cosine": vd.cosine, "rel_l2": vd.rel_error, "tuning_table": tuner.results[key]}
            if "best_single" in r:
                r[label]["vs_best_single_pct_sequential"] = 100.0 * (ms / r["best_single"]["ms"] - 1.0)
            # interleaved: the pick through the override vs the best verified single backend called directly
            # (sequential figures drift by a few % with the GPU's clocks)
            best = r.get("best_single", {}).get("backend", "sdpa")
            direct_b = B.get(best)

            def direct(direct_b=direct_b):
                return call.finish(direct_b.run(call))

            pa, pb = [], []
            if not b.args.pairs:
                continue
            for _ in range(b.args.pairs):
                pa.append(cuda_time(direct, 1)[0])
                pb.append(cuda_time(via_override, 1)[0])
            ma, mb = statistics.median(pa), statistics.median(pb)
            r[label]["interleaved"] = {"best_single": best, "best_single_ms_median": ma, "auto_ms_median": mb,
                                       "auto_vs_best_single_pct": 100.0 * (mb / ma - 1.0), "pairs": len(pa)}
            b.log(f"  {label} -> {picked} {mb:.2f} ms vs {best} {ma:.2f} ms interleaved ({100.0 * (mb / ma - 1.0):+.2f}%), "
                  f"tuning {tuner.tune_seconds[key]:.1f} s")
        except Exception as exc:
            r[label] = {"error": f"{type(exc).__name__}: {str(exc)[:600]}"}
            traceback.print_exc()
        empty_cache()
        b.save()

    # ComfyUI's own default attention, and the override's overhead on top of the same kernel
    if comfy_attn is not None and b.left() > 30:
        try:
            fn = comfy_attn.optimized_attention
            m = measure("comfy_default", lambda: fn(q, k, v, heads=HEADS), b.args.reps)
            m["function"] = fn.__name__
            r["comfy_default"] = m
            b.log(f"  comfy_default ({fn.__name__}) {m['ms']:.2f} ms")
            ov = AttentionOverride("sdpa", fallback="comfy_default", verify=False)
            with_ov = {"optimized_attention_override": ov}
            plain: dict = {}
            a_ms, o_ms = [], []
            for _ in range(b.args.overhead_pairs):
                a_ms.append(cuda_time(lambda: fn(q, k, v, heads=HEADS, transformer_options=plain), 1)[0])
                o_ms.append(cuda_time(lambda: fn(q, k, v, heads=HEADS, transformer_options=with_ov), 1)[0])
            if a_ms:
                ma, mo = statistics.median(a_ms), statistics.median(o_ms)
                r["override_overhead"] = {"comfy_fn_ms_median": ma, "with_sdpa_override_ms_median": mo,
                                          "overhead_pct": 100.0 * (mo / ma - 1.0), "pairs": len(a_ms),
                                          "note": "same SDPA kernel both ways; the difference is the override's cost"}
                b.log(f"  override overhead {100.0 * (mo / ma - 1.0):+.2f}% ({ma:.2f} -> {mo:.2f} ms)")
        except Exception as exc:
            r["comfy_default"] = {"error": f"{type(exc).__name__}: {str(exc)[:600]}"}
            traceback.print_exc()
    del q, k, v, call, ref
    empty_cache()
    return r


def empty_cache():
    if DEV.type == "cuda":
        torch.cuda.empty_cache()


def must_not_run(*a, **k):
    raise RuntimeError("the override handed a call to ComfyUI although a backend should take it")


def host_overhead_us(n: int = 2000) -> dict:
    """Python cost of one dispatch through the override, on a tiny call (kernel time subtracted)."""
    from wan_accel.attention import AttentionOverride

    q = torch.randn(1, 64, 2 * 64, device=DEV, dtype=torch.bfloat16)
    ov = AttentionOverride("sdpa", verify=False)
    from wan_accel.attention import AttnCall
    from wan_accel.attention import backends as B

    def direct():
        c = AttnCall.from_args((q, q, q, 2), {})
        return c.finish(B.get("sdpa").run(c))

    def through():
        return ov(must_not_run, q, q, q, heads=2, transformer_options={}, _inside_attn_wrapper=True)

    def plain_sdpa():
        return torch.nn.functional.scaled_dot_product_attention(q.view(1, 64, 2, 64).transpose(1, 2), q.view(1, 64, 2, 64).transpose(1, 2),
                                                                q.view(1, 64, 2, 64).transpose(1, 2)).transpose(1, 2).reshape(1, 64, 128)

    out = {}
    for label, fn in (("plain_sdpa_us", plain_sdpa), ("backend_direct_us", direct), ("through_override_us", through)):
        for _ in range(50):
            fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        out[label] = (time.perf_counter() - t0) / n * 1e6
    out["override_cost_us"] = out["through_override_us"] - out["plain_sdpa_us"]
    return out


def smoke() -> dict:
    """Every available backend through the override at small shapes: self/cross, both layout flags, with a
    mask where the backend takes one; the cosine to a float32 reference and which backend ran."""
    from wan_accel.attention import AttentionOverride, AttnCall
    from wan_accel.attention import backends as B
    from wan_accel.attention import verify as V

    g = torch.Generator(device=DEV).manual_seed(1)
    out: dict = {}
    cases = [("self", 2048, 2048, None, False), ("cross_text", 2048, 512, None, False),
             ("self_hnd", 2048, 2048, None, True), ("self_key_padding_mask", 1024, 1024, "mask", False)]
    for bname in B.names(False):
        be = B.get(bname)
        if not be.available:
            continue
        res = {}
        for case, lq, lk, mask_kind, skip in cases:
            shp = (lambda l_: (2, 8, l_, 128)) if skip else (lambda l_: (2, l_, 8 * 128))
            q = torch.randn(shp(lq), device=DEV, dtype=torch.bfloat16, generator=g)
            k = torch.randn(shp(lk), device=DEV, dtype=torch.bfloat16, generator=g)
            v = torch.randn(shp(lk), device=DEV, dtype=torch.bfloat16, generator=g)
            mask = None
            if mask_kind:
                mask = torch.zeros(2, 1, 1, lk, device=DEV, dtype=torch.bfloat16)
                mask[..., lk - 100:] = float("-inf")
            ov = AttentionOverride(bname, fallback="sdpa_math", verify=False)
            try:
                o = ov(must_not_run, q, k, v, heads=8, mask=mask, skip_reshape=skip, skip_output_reshape=skip,
                       transformer_options={}, _inside_attn_wrapper=True)
                c = AttnCall.from_args((q, k, v, 8), {"mask": mask, "skip_reshape": skip})
                idx, ref = V.reference_rows(c, 512)
                oc = AttnCall.from_args((o, o, o, 8), {"skip_reshape": skip}).q if not skip else o
                vd = V.compare(oc, idx, ref)
                res[case] = {"ran": ov.last_used, "cosine": round(vd.cosine, 6), "rel_l2": round(vd.rel_error, 5),
                             "shape_ok": tuple(o.shape) == tuple(q.shape)}
            except Exception as exc:
                res[case] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        out[bname] = res
    return out


def bench_model(b: Bench, comfy_root: str, blocks: int) -> dict:
    """A Wan 14B forward (random weights, full width, ``blocks`` blocks): comfy_default vs auto."""
    import comfy.ldm.wan.model as wan
    import comfy.ops
    from wan_accel.attention import AttentionOverride, AutoTuner

    torch.manual_seed(0)
    with torch.device("cuda"):
        m = wan.WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=5120, ffn_dim=13824,
                         freq_dim=256, text_dim=4096, out_dim=16, num_heads=40, num_layers=blocks,
                         operations=comfy.ops.disable_weight_init, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        for n_, p in m.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[-1] if p.ndim == 2 else p[0].numel()))
            else:
                p.fill_(1.0 if "norm" in n_ else 0.0)
    m.eval()
    x = torch.randn(1, 16, 21, 152, 104, device="cuda", dtype=torch.bfloat16)
    t = torch.tensor([500.0], device="cuda")
    ctx = torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16)
    r = {"blocks": blocks, "dim": 5120, "ffn_dim": 13824, "heads": 40, "tokens": 21 * 76 * 52,
         "note": f"random weights; {blocks} of the 14B model's 40 blocks at full width"}

    def fwd(topts):
        with torch.no_grad():
            return m(x, t, ctx, transformer_options=topts)

    ref = None
    configs = [("comfy_default", lambda: {}),
               ("auto", lambda: {"optimized_attention_override": AttentionOverride("auto", "sdpa", tuner=AutoTuner(reps=2))})]
    if b.args.relaxed_cosine:
        configs.append(("auto_relaxed", lambda: {"optimized_attention_override": AttentionOverride(
            "auto", "sdpa", tuner=AutoTuner(reps=2), min_cosine=b.args.relaxed_cosine, max_rel_error=b.args.relaxed_rel)}))
    for label, mk in configs:
        if b.left() < 45:
            r[label] = {"skipped": "bench deadline"}
            continue
        topts = mk()
        first_ms, out = wall(lambda: fwd(dict(topts)))
        ms, out = cuda_time(lambda: fwd(dict(topts)), 1)
        o = out.float()
        entry = {"first_forward_ms": first_ms, "forward_ms": ms, "per_block_ms": ms / blocks,
                 "finite": bool(torch.isfinite(o).all())}
        if ref is None:
            ref = o
        else:
            entry["cosine_vs_comfy_default"] = float(torch.nn.functional.cosine_similarity(o.flatten(), ref.flatten(), dim=0))
            entry["rel_l2_vs_comfy_default"] = float((o - ref).norm() / ref.norm())
        ov = topts.get("optimized_attention_override")
        if ov is not None:
            entry["picked"] = {f"{k_[2]}x{k_[3]}": v_ for k_, v_ in ov.tuner.choices.items()}
            entry["tuning_tables"] = {f"{k_[2]}x{k_[3]}": t_ for k_, t_ in ov.tuner.results.items()}
            entry["calls"] = dict(ov.counts)
            r[label + "_vs_comfy_default_pct"] = 100.0 * (ms / r["comfy_default"]["forward_ms"] - 1.0) \
                if "forward_ms" in r.get("comfy_default", {}) else None
        r[label] = entry
        b.log(f"  model {label}: {ms:.0f} ms/forward ({blocks} blocks), first {first_ms:.0f} ms, {entry.get('picked')}")
        del out, o
        b.save()
    del m
    empty_cache()
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--comfy", default=None, help="a ComfyUI checkout, for its default attention (the anchor)")
    ap.add_argument("--shapes", default="14b,480p,720p")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--overhead-pairs", type=int, default=5)
    ap.add_argument("--model-blocks", type=int, default=0)
    ap.add_argument("--backends", default="", help="comma list to time (default: every registered backend)")
    ap.add_argument("--pairs", type=int, default=5, help="interleaved pairs for auto vs the best single backend")
    ap.add_argument("--relaxed-cosine", type=float, default=0.0,
                    help="also run auto with these looser verification thresholds (e.g. 0.998) ...")
    ap.add_argument("--relaxed-rel", type=float, default=0.07, help="... and this relative error")
    ap.add_argument("--skip-smoke", action="store_true")
    ap.add_argument("--deadline-s", type=float, default=330.0)
    ap.add_argument("--device", default="cuda", help="cuda; cpu only to check this script (--shapes tiny)")
    args = ap.parse_args(argv)
    global DEV
    DEV = torch.device(args.device)
    if DEV.type == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    b = Bench(args)
    wa = load_wan_accel()
    comfy_attn = None
    if args.comfy:
        sys.path.insert(0, str(Path(args.comfy).resolve()))
        try:
            import comfy.ldm.modules.attention as comfy_attn  # noqa: F811
            b.res["comfy_default_function"] = comfy_attn.optimized_attention.__name__
        except Exception as exc:
            b.res["comfy_import_error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
    b.res["env"] = env_info(wa)
    b.log(json.dumps(b.res["env"], default=str))
    b.save()
    try:
        b.res["host_overhead"] = host_overhead_us()
        b.log("host overhead", b.res["host_overhead"])
    except Exception as exc:
        b.res["host_overhead"] = {"error": repr(exc)}
    try:
        if args.skip_smoke:
            raise StopIteration
        b.res["smoke"] = smoke()
        b.log("smoke", json.dumps(b.res["smoke"]))
    except StopIteration:
        b.res["smoke"] = "skipped"
    except Exception as exc:
        b.res["smoke"] = {"error": repr(exc)}
        traceback.print_exc()
    b.save()
    b.res["shapes"] = {}
    for name in args.shapes.split(","):
        if b.left() < 60:
            b.res["shapes"][name] = {"skipped": "bench deadline"}
            continue
        try:
            b.res["shapes"][name] = bench_shape(b, name, comfy_attn)
        except Exception as exc:
            b.res["shapes"][name] = {"error": f"{type(exc).__name__}: {str(exc)[:600]}"}
            traceback.print_exc()
        b.save()
    if args.model_blocks and comfy_attn is not None:
        try:
            b.res["model"] = bench_model(b, args.comfy, args.model_blocks)
        except Exception as exc:
            b.res["model"] = {"error": f"{type(exc).__name__}: {str(exc)[:600]}"}
            traceback.print_exc()
    b.res["elapsed_s"] = time.perf_counter() - b.t0
    b.save()
    b.log("wrote", b.out_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
