"""Grid benchmark of the ``triton_q8`` attention kernel at Wan shapes, with cuDNN SDPA as the anchor; JSON.

    python bench/triton_q8.py --out $OUT/triton_q8.json [--shapes 14b,720p,480p] [--reps 3] [--deadline-s 270]
    python bench/triton_q8.py --small --out /tmp/q8_small.json   # CPU, TRITON_INTERPRET=1, tiny shapes

q/k/v are random bf16 in ComfyUI's (B, L, H*D) layout viewed as (B, H, L, D) (B 1, 40 heads, head dim
128). Per shape, in one process: SDPA (PyTorch's choice, cuDNN, flash) as the anchor, then every config
of a small fixed grid (launch shape x P·V kind, scores converted by addition, warp specialisation,
FP8 Q·K and no-TMA controls), each warmed up
once (compile) then timed with CUDA events (median of --reps). Per config: ms, TFLOP/s
(4*B*H*Lq*Lk*D / t), cosine / relative L2 / max abs against float32 SDPA on 1024 query rows spread
over the sequence (the dispatcher's own check), ``verified`` (cosine >= 0.999 and rel <= 0.05),
``faster_than_sdpa`` (than the fastest SDPA kernel of the same run) and ``auto_would_pick``: verified
and faster than SDPA, i.e. ``auto`` would rank ``triton_q8`` first if its tuner picked this config
(the tuner only picks verified configs). On the first shape also registers / spills / shared memory of
each compiled kernel, the quantisation pass alone and the accuracy on structured inputs (keys and
values with per-channel offsets). Per shape ``runtime``: the kernel as it runs in ComfyUI (fresh
tuning cache): its pick, the first call's seconds, ms and check. The grid is timed shape by shape in
--deadline-s (default 270 s; an H200 should need 3 to 4 minutes for the three shapes); configs past the
deadline are listed as skipped, and the JSON is rewritten after every shape.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from typing import TYPE_CHECKING

SMALL = "--small" in sys.argv
if SMALL:  # before anything imports triton: the kernels are built for the interpreter
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _common import load_wan_accel, write_json  # noqa: E402

if TYPE_CHECKING:  # the package is importable only after load_wan_accel()
    from wan_accel.attention.triton_q8_tune import Config

HEADS, HEAD_DIM = 40, 128
WAN_14B = 21 * 76 * 52  # 81 frames at 1216x832: latent frames x (h/16) x (w/16)
SHAPES = {  # name: (batch, query tokens, key tokens)
    "14b": (1, WAN_14B, WAN_14B),
    "720p": (1, 21 * 80 * 45, 21 * 80 * 45),
    "480p": (1, 21 * 52 * 30, 21 * 52 * 30),
}
SMALL_SHAPES = {"tiny": (1, 200, 200), "tiny_long": (1, 64, 1100)}


def grid(capability, small: bool) -> list[tuple[str, str, "Config"]]:
    """(Q·K kind, P·V kind, launch config) to time at every shape."""
    from wan_accel.attention.triton_q8_tune import Config

    if small:
        return [("int8", "fp8", Config(64, 64, 4, 2)), ("int8", "16bit", Config(64, 64, 4, 2, use_tma=True)),
                ("fp8", "fp8", Config(64, 64, 4, 2)), ("int8", "fp8", Config(64, 64, 4, 2, i2f_add=True)),
                ("int8", "fp8", Config(64, 64, 4, 2, i2f_add=True, k_block=True))]
    pvs = ["fp8", "16bit"] if capability >= (8, 9) else ["16bit"]
    if capability >= (9, 0):
        shapes = [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 8, 4), (64, 64, 4, 3),
                  (64, 128, 4, 2)]
        out = [("int8", pv, Config(*s, use_tma=True)) for pv in pvs for s in shapes]
        for pv in pvs:  # scores converted by addition; warp specialisation
            out += [("int8", pv, Config(128, 128, 8, 3, use_tma=True, i2f_add=True)),
                    ("int8", pv, Config(128, 64, 8, 3, use_tma=True, i2f_add=True)),
                    ("int8", pv, Config(128, 128, 8, 3, use_tma=True, warp_specialize=True))]
        return out + [("int8", "16bit", Config(128, 128, 8, 3)), ("fp8", "fp8", Config(128, 128, 8, 3, use_tma=True))]
    shapes = [(128, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 64, 4, 2), (128, 128, 8, 2)]
    return ([("int8", pv, Config(*s)) for pv in pvs for s in shapes]
            + [("int8", pv, Config(128, 64, 4, 3, i2f_add=True)) for pv in pvs])


def parse_configs(text: str) -> list[tuple[str, str, "Config"]]:
    """``--configs``: 'int8/fp8:64,128,4,2,tma;int8/fp8:64,128,4,2,tma,kb' -> grid entries."""
    from wan_accel.attention.triton_q8_tune import Config

    out = []
    for item in filter(None, (p.strip() for p in text.split(";"))):
        kinds, _, spec = item.partition(":")
        qk, _, pv = kinds.partition("/")
        if qk not in ("int8", "fp8") or pv not in ("fp8", "16bit") or not spec:
            raise SystemExit(f"--configs item {item!r}: expected QK/PV:CONFIG, e.g. int8/fp8:64,128,4,2,tma")
        out.append((qk, pv, Config.parse(spec)))
    return out


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
        ok = [e["ms"] for e in self.result["sdpa"].values() if e.get("verified")]
        self.sdpa_ms = min(ok) if ok else float("inf")
        self.result["sdpa_best_ms"] = self.sdpa_ms

    def q8(self, qk: str, pv: str, cfg, with_resources: bool) -> dict:
        from wan_accel.attention import triton_q8

        entry = {"qk": qk, "pv": pv, "config": cfg.label()}
        entry.update(self.measure(lambda: triton_q8.attention(self.q, self.k, self.v, qk=qk, pv=pv, config=cfg)))
        if "ms" in entry:
            entry["faster_than_sdpa"] = entry["ms"] < self.sdpa_ms
            entry["auto_would_pick"] = entry["verified"] and entry["faster_than_sdpa"]
            if with_resources:
                entry.update(self.resources(qk, pv, cfg))
        self.result["triton_q8"]["configs"].append(entry)
        print(f"  {self.name} {qk}/{pv} {cfg.label()}: {entry.get('ms', entry.get('error'))} ms, "
              f"cos {entry.get('cosine')}", flush=True)
        return entry

    def resources(self, qk: str, pv: str, cfg) -> dict:
        """Registers per thread, spilled bytes and shared memory of the compiled attention kernel."""
        from wan_accel.attention import triton_q8

        heads = slice(0, 1)
        kv = triton_q8.quantize_kv(self.k[:, heads], self.v[:, heads], qk == "fp8", pv == "fp8", cfg.k_block)
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

    def runtime(self) -> None:
        """The kernel as the backend runs it: tuned on this first call (fresh cache), then timed."""
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
                self.result["triton_q8"]["runtime"] = {"error": f"{type(exc).__name__}: {exc}"[:600]}
                return
            finally:
                os.environ.pop("WAN_ACCEL_TRITON_Q8_CACHE", None)
            entry = {"first_call_s": round(time.perf_counter() - t0, 2),
                     "picks": {k: c.label() for k, c in triton_q8.TUNER.picks.items()},
                     "candidates": dict(triton_q8.TUNER.timings)}
            entry.update(self.measure(lambda: triton_q8.attention(self.q, self.k, self.v)))
            if "ms" in entry:
                entry["auto_would_pick"] = entry["verified"] and entry["ms"] < self.sdpa_ms
            entry["extra_peak_gib"] = extra_peak_gib(lambda: triton_q8.attention(self.q, self.k, self.v), self.device)
            self.result["triton_q8"]["runtime"] = entry

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


def best(entries: list[dict]) -> dict | None:
    ok = [e for e in entries if "ms" in e and e["verified"]]
    return min(ok, key=lambda e: e["ms"]) if ok else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default=None, help="comma list of " + ", ".join(SHAPES))
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--deadline-s", type=float, default=270.0, help="stop timing grid configs after this many seconds")
    ap.add_argument("--small", action="store_true", help="CPU under TRITON_INTERPRET=1, tiny shapes (checks the script)")
    ap.add_argument("--configs", default=None,
                    help="time these instead of the grid: ';'-separated QK/PV:CONFIG, CONFIG as "
                         "WAN_ACCEL_TRITON_Q8_CONFIG spells it, e.g. 'int8/fp8:64,128,4,2,tma,kb'")
    ap.add_argument("--no-runtime", action="store_true", help="skip the run-time tuner's pass per shape")
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
    reps = a.reps or (1 if a.small else 3)
    capability = torch.cuda.get_device_capability() if device.type == "cuda" else None
    configs = parse_configs(a.configs) if a.configs else grid(capability, a.small)
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (TRITON_INTERPRET=1)",
              "capability": capability, "torch": torch.__version__, "triton": triton.__version__,
              "default_kinds": triton_q8.kinds(capability), "pv_choices": triton_q8.pv_choices(capability),
              "kernel_version": triton_q8.KERNEL_VERSION, "args": vars(a), "grid": [
                  f"{qk}/{pv} {c.label()}" for qk, pv, c in configs], "shapes": {}}
    for i, name in enumerate(names):
        b, lq, lk = shapes[name]
        print(f"{name}: B{b} H{heads} Lq{lq} Lk{lk} D{d}", flush=True)
        sb = None
        try:
            sb = ShapeBench(name, b, lq, lk, heads, d, device, reps)
            sb.sdpa()
            res = sb.result["triton_q8"]
            for qk, pv, cfg in configs:
                if time.perf_counter() > deadline:
                    res.setdefault("skipped", []).append(f"{qk}/{pv} {cfg.label()}")
                    continue
                sb.q8(qk, pv, cfg, with_resources=i == 0)
            res["best"] = best(res["configs"])
            res["runtime_configs_only"] = "the run-time tuner times only triton_q8_tune.candidates(); this grid is wider"
            if not a.no_runtime:
                sb.runtime()
            if i == 0 and res["best"]:
                top = res["best"]
                cfg = next(c for qk, pv, c in configs if c.label() == top["config"] and pv == top["pv"] and qk == top["qk"])
                res["quant_ms"] = sb.quant_ms(top["qk"], top["pv"])
                res["structured"] = sb.structured_accuracy(top["qk"], top["pv"], cfg)
            result["shapes"][name] = sb.result
        except Exception:
            result["shapes"][name] = {"error": traceback.format_exc()[-2000:]}
        del sb
        if device.type == "cuda":
            torch.cuda.empty_cache()
        result["seconds"] = round(time.perf_counter() - t_start, 1)
        write_json(a.out, result)  # after every shape: a run cut short keeps what it measured


if __name__ == "__main__":
    main()
