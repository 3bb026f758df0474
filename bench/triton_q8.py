"""Benchmark and tuning sweep of the ``triton_q8`` attention kernel at Wan shapes; writes JSON.

    python bench/triton_q8.py --out bench/results/triton_q8_h100.json [--shapes 14b,720p,480p,cross]
                              [--reps 5] [--deadline-s 170]
    python bench/triton_q8.py --small --out /tmp/q8_small.json   # CPU, TRITON_INTERPRET=1, tiny shapes

q/k/v are random bf16 in ComfyUI's (B, L, H*D) layout viewed as (B, H, L, D) (B 1, 40 heads, head dim
128). Per shape: SDPA (PyTorch's choice, cuDNN, flash) and ``triton_q8`` configs, each warmed up once
(compile) then timed with CUDA events (median of --reps), TFLOP/s = 4*B*H*Lq*Lk*D / t, error against
float32 SDPA on 1024 query rows spread over the sequence (cosine, relative L2, max abs: the same check
the dispatcher's ``verify`` makes). The sweep is staged so one run teaches the most:

1. kinds: (INT8 or FP8 Q·K) x (FP8 or 16-bit P·V) x (TMA or pointer loads) at one base config;
2. blocks: BLOCK_M x BLOCK_N x warps x stages for the fastest kind that passes the default check;
3. extras: warp specialisation on the best config;

on the first shape only; later shapes time SDPA, the three best configs and the run-time autotune
(its pick, its candidates' timings, the first call's seconds). Also per shape: the quantisation pass
alone, extra peak memory against SDPA's, and on the first shape the accuracy on structured inputs
(peaked queries, keys and values with per-channel offsets: what K and V smoothing is for). The
cross shape (82,992 queries x 512 keys) says whether Wan's cross-attention is worth taking.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback

SMALL = "--small" in sys.argv
if SMALL:  # before anything imports triton: the kernels are built for the interpreter
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _common import load_wan_accel, write_json  # noqa: E402

HEADS, HEAD_DIM = 40, 128
WAN_14B = 21 * 76 * 52  # 81 frames at 1216x832: latent frames x (h/16) x (w/16)
SHAPES = {  # name: (batch, query tokens, key tokens)
    "14b": (1, WAN_14B, WAN_14B),
    "720p": (1, 21 * 80 * 45, 21 * 80 * 45),
    "480p": (1, 21 * 52 * 30, 21 * 52 * 30),
    "cross": (1, WAN_14B, 512),  # the text cross-attention of the 14B shape
}
SMALL_SHAPES = {"tiny": (1, 200, 200), "tiny_cross": (1, 200, 70)}
KINDS = [("int8", "fp8"), ("int8", "16bit"), ("fp8", "fp8")]


def extra_peak_gib(fn, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return round((torch.cuda.max_memory_allocated(device) - base) / 2**30, 3)


class ShapeBench:
    def __init__(self, name: str, b: int, lq: int, lk: int, heads: int, d: int, device, reps: int):
        from wan_accel.attention.contract import AttnCall
        from wan_accel.attention.verify import reference_rows

        self.name, self.device, self.reps = name, device, reps
        g = torch.Generator(device=device).manual_seed(0)

        def blhd(length):
            t = torch.randn((b, length, heads * d), generator=g, device=device, dtype=torch.bfloat16)
            return t.view(b, length, heads, d).transpose(1, 2)

        self.q, self.k, self.v = blhd(lq), blhd(lk), blhd(lk)
        self.call = AttnCall(self.q, self.k, self.v, heads, None, None, False, False)
        self.flop = 4.0 * b * heads * lq * lk * d
        self.idx, self.ref = reference_rows(self.call)
        self.result = {"batch": b, "q_len": lq, "k_len": lk, "heads": heads, "head_dim": d, "sdpa": {},
                       "triton_q8": {"configs": []}}

    def measure(self, fn) -> dict:
        from wan_accel.attention.triton_q8_tune import time_ms
        from wan_accel.attention.verify import compare

        try:
            out = fn()  # compile / warm up
            ms = time_ms(fn, self.reps)
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"[:400]}
        v = compare(out, self.idx, self.ref)
        return {"ms": round(ms, 3), "tflops": round(self.flop / ms / 1e9, 1), "cosine": round(v.cosine, 6),
                "rel_error": round(v.rel_error, 5), "max_abs": round(v.max_abs, 5), "verified": v.ok}

    def sdpa(self) -> None:
        kernels = {"default": None}
        if self.device.type == "cuda":
            kernels.update(cudnn="CUDNN_ATTENTION", flash="FLASH_ATTENTION")
        for label, kernel in kernels.items():
            def fn(kernel=kernel):
                if kernel is None:
                    return F.scaled_dot_product_attention(self.q, self.k, self.v)
                from torch.nn.attention import SDPBackend, sdpa_kernel

                with sdpa_kernel([getattr(SDPBackend, kernel)]):
                    return F.scaled_dot_product_attention(self.q, self.k, self.v)
            self.result["sdpa"][label] = self.measure(fn)
        self.result["sdpa"]["default"]["extra_peak_gib"] = extra_peak_gib(
            lambda: F.scaled_dot_product_attention(self.q, self.k, self.v), self.device)

    def q8(self, qk: str, pv: str, cfg, stage: str) -> dict:
        from wan_accel.attention import triton_q8

        entry = {"stage": stage, "qk": qk, "pv": pv, "config": cfg.label()}
        entry.update(self.measure(lambda: triton_q8.attention(self.q, self.k, self.v, qk=qk, pv=pv, config=cfg)))
        if "ms" in entry:
            entry.update(self.resources(qk, pv, cfg))
        self.result["triton_q8"]["configs"].append(entry)
        print(f"  {self.name} {stage} {qk}/{pv} {cfg.label()}: {entry.get('ms', entry.get('error'))}", flush=True)
        return entry

    def resources(self, qk: str, pv: str, cfg) -> dict:
        """Registers per thread, spilled bytes and shared memory of the compiled attention kernel."""
        from wan_accel.attention import triton_q8

        heads = slice(0, 1)
        kv = triton_q8.quantize_kv(self.k[:, heads], self.v[:, heads], qk == "fp8", pv == "fp8")
        out = torch.empty_like(self.q[:, heads])
        cap = torch.cuda.get_device_capability() if self.device.type == "cuda" else None
        kernel = triton_q8.launch_attention(self.q[:, heads], kv, out, cfg, qk == "fp8", pv == "fp8", cap)
        if kernel is None:  # the interpreter compiles nothing
            return {}
        return {"regs": getattr(kernel, "n_regs", None), "spills": getattr(kernel, "n_spills", None),
                "shared_bytes": getattr(kernel.metadata, "shared", None)}

    def quant_ms(self, qk: str, pv: str) -> float:
        from wan_accel.attention import triton_q8
        from wan_accel.attention.triton_q8_tune import time_ms

        return round(time_ms(lambda: triton_q8.quantize_kv(self.k, self.v, qk == "fp8", pv == "fp8"), self.reps), 3)

    def autotune(self) -> None:
        from wan_accel.attention import triton_q8

        with tempfile.TemporaryDirectory() as tmp:
            os.environ["WAN_ACCEL_TRITON_Q8_CACHE"] = os.path.join(tmp, "tune.json")
            triton_q8.reset()
            t0 = time.perf_counter()
            try:
                triton_q8.attention(self.q, self.k, self.v)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
            except Exception as exc:
                self.result["triton_q8"]["autotune"] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
                return
            first_s = time.perf_counter() - t0
            entry = {"first_call_s": round(first_s, 2), "picks": {k: c.label() for k, c in triton_q8.TUNER.picks.items()},
                     "timings": dict(triton_q8.TUNER.timings)}
            entry.update(self.measure(lambda: triton_q8.attention(self.q, self.k, self.v)))
            entry["extra_peak_gib"] = extra_peak_gib(lambda: triton_q8.attention(self.q, self.k, self.v), self.device)
            self.result["triton_q8"]["autotune"] = entry
            os.environ.pop("WAN_ACCEL_TRITON_Q8_CACHE", None)

    def structured_accuracy(self, qk: str, pv: str, cfg) -> dict:
        """Peaked attention over keys and values with per-channel offsets (real activations look
        more like this than like N(0, 1))."""
        from wan_accel.attention import triton_q8
        from wan_accel.attention.contract import AttnCall
        from wan_accel.attention.verify import compare, reference_rows

        g = torch.Generator(device=self.device).manual_seed(1)
        d = self.q.shape[-1]

        def offset(scale: float) -> torch.Tensor:  # one value per (head, channel), the same for every token
            return (scale * torch.randn((1, self.q.shape[1], 1, d), generator=g, device=self.device)).to(self.q.dtype)

        q, k, v = self.q * 2, self.k + offset(4.0), self.v + offset(2.0)
        idx, ref = reference_rows(AttnCall(q, k, v, q.shape[1], None, None, False, False))
        out = triton_q8.attention(q, k, v, qk=qk, pv=pv, config=cfg)
        verdict = compare(out, idx, ref)
        return {"qk": qk, "pv": pv, "config": cfg.label(), "cosine": round(verdict.cosine, 6),
                "rel_error": round(verdict.rel_error, 5), "verified": verdict.ok}


def best(entries: list[dict], verified_only: bool = True) -> dict | None:
    ok = [e for e in entries if "ms" in e and (e["verified"] or not verified_only)]
    return min(ok, key=lambda e: e["ms"]) if ok else (best(entries, False) if verified_only else None)


def sweep(sb: ShapeBench, small: bool, capability, deadline: float) -> None:
    from wan_accel.attention import triton_q8
    from wan_accel.attention.triton_q8_tune import Config

    def cfg_of(entry: dict) -> Config:
        return next(c for c in tried if c.label() == entry["config"])

    tried: list[Config] = []
    hopper = capability is not None and capability >= (9, 0)
    base = Config(64, 64, 4, 2) if small else Config(128, 128, 8, 2) if hopper else Config(128, 64, 4, 3)
    kind_entries = []
    for qk, pv in KINDS:
        for tma in ([False, True] if hopper or small else [False]):
            cfg = Config(base.block_m, base.block_n, base.num_warps, base.num_stages, use_tma=tma)
            tried.append(cfg)
            kind_entries.append(sb.q8(qk, pv, cfg, "kinds"))
    winner = best(kind_entries)
    if winner is None:
        return
    qk, pv, use_tma = winner["qk"], winner["pv"], "_tma" in winner["config"]
    grid = [(64, 64, 4, 2), (128, 64, 4, 2)] if small else [
        (m, n, w, s) for m in (64, 128) for n in (64, 128) for w in (4, 8) for s in (2, 3, 4)
        if not (m == 64 and n == 64 and w == 8)]
    block_entries = [winner]
    for m, n, w, s in grid:
        cfg = Config(m, n, w, s, use_tma=use_tma)
        if cfg in tried:
            continue
        if time.perf_counter() > deadline:
            sb.result["triton_q8"]["skipped"] = "deadline reached in the blocks stage"
            break
        tried.append(cfg)
        block_entries.append(sb.q8(qk, pv, cfg, "blocks"))
    top = best(block_entries)
    if top is not None and time.perf_counter() < deadline:
        c = cfg_of(top)
        ws = Config(c.block_m, c.block_n, c.num_warps, c.num_stages, c.use_tma, warp_specialize=True)
        tried.append(ws)
        sb.q8(qk, pv, ws, "extras")
    final = best(sb.result["triton_q8"]["configs"])
    sb.result["triton_q8"]["best"] = final
    sb.result["triton_q8"]["quant_ms"] = sb.quant_ms(qk, pv)
    sb.result["triton_q8"]["structured"] = sb.structured_accuracy(final["qk"], final["pv"], cfg_of(final))
    sb.result["triton_q8"]["extra_peak_gib"] = extra_peak_gib(lambda: triton_q8.attention(
        sb.q, sb.k, sb.v, qk=final["qk"], pv=final["pv"], config=cfg_of(final)), sb.device)
    sb.top_configs = [(e["qk"], e["pv"], cfg_of(e)) for e in
                      sorted([e for e in sb.result["triton_q8"]["configs"] if "ms" in e and e["verified"]],
                             key=lambda e: e["ms"])[:3]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default=None, help="comma list of " + ", ".join(SHAPES))
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--deadline-s", type=float, default=170.0,
                    help="stop the block sweep after this many seconds (the rest takes about a minute more)")
    ap.add_argument("--small", action="store_true", help="CPU under TRITON_INTERPRET=1, tiny shapes (checks the script)")
    a = ap.parse_args()
    t_start = time.perf_counter()
    deadline = t_start + a.deadline_s
    load_wan_accel()
    import triton

    from wan_accel.attention import triton_q8

    device = torch.device("cpu" if a.small else "cuda")
    shapes = SMALL_SHAPES if a.small else SHAPES
    names = a.shapes.split(",") if a.shapes else list(shapes)
    heads, d = (2, 64) if a.small else (HEADS, HEAD_DIM)
    reps = a.reps or (1 if a.small else 5)
    capability = torch.cuda.get_device_capability() if device.type == "cuda" else None
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (TRITON_INTERPRET=1)",
              "capability": capability, "torch": torch.__version__, "triton": triton.__version__,
              "default_kinds": triton_q8.kinds(capability), "args": vars(a), "shapes": {}}
    top = None
    for name in names:
        b, lq, lk = shapes[name]
        print(f"{name}: B{b} H{heads} Lq{lq} Lk{lk} D{d}", flush=True)
        sb = None
        try:
            sb = ShapeBench(name, b, lq, lk, heads, d, device, reps)
            sb.sdpa()
            if top is None:
                sweep(sb, a.small, capability, deadline)
                top = getattr(sb, "top_configs", None)
            else:
                for qk, pv, cfg in top or []:
                    sb.q8(qk, pv, cfg, "top")
                sb.result["triton_q8"]["best"] = best(sb.result["triton_q8"]["configs"])
            sb.autotune()
            result["shapes"][name] = sb.result
        except Exception:
            result["shapes"][name] = {"error": traceback.format_exc()[-2000:]}
        del sb
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    write_json(a.out, result)


if __name__ == "__main__":
    main()
