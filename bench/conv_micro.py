"""Micro-benchmark of the VAE's 3x3x3 convs: cuDNN against the Triton implicit GEMM
(``vae_accel/kernels/conv3d_triton.py``), bf16 channels-last, one JSON.

    cd bench && python3 conv_micro.py --out /tmp/conv_micro.json        # H200: ~1-2 min
    cd bench && python3 conv_micro.py --cpu-check --out /tmp/conv.json  # CPU, TRITON_INTERPRET=1, tiny, float32

Shapes (the input holds the two causal frames, so time is "valid"; spatial padding 1):
  decoder  x (1, 96, 6, 612, 832), w (96, 96, 3, 3, 3): cuDNN runs it on an sm80 kernel, ~40% of a decode;
  encoder  x (1, 96, 6, 674, 832), the same weights;   head  w (3, 96, 3, 3, 3) on the decoder's input;
  c192     x (1, 192, 6, 312, 416), w (192, 192, 3, 3, 3): where cuDNN already picks an sm90 kernel.
Per shape: cuDNN as PyTorch calls it (``F.conv3d`` with bias: its bias add is a second kernel), with
``cudnn.benchmark``, without bias, and with the input channels zero-padded to 128 (weights likewise:
the same result) and also the output channels (the output a view of the first Cout), to see whether
cuDNN then takes an sm90 kernel; then every config of ``conv3d_triton.CONFIGS`` (weights packed once,
as a caller would cache them). Each: median ms of --reps calls after warm-up (CUDA events), TFLOP/s
(2*N*Cout*Cin*kt*k*k*T_out*H_out*W_out / s), max abs and relative (max abs / max |ref|) error against
float32 ``F.conv3d`` of the same inputs (TF32 off), ``ok`` (relative error <= 2e-2: bf16 output
rounding is ~4e-3). cuDNN variants: the CUDA kernels of one call (torch.profiler). Triton configs: the
first call's seconds (compile + run; Triton's cache is a fresh folder unless --warm-cache) and the
compiled kernel's registers, spills and shared memory. A config that fails is recorded with its error.
The JSON is rewritten after every shape.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

CPU_CHECK = "--cpu-check" in sys.argv
if CPU_CHECK:  # before anything imports triton: the kernel is built for the interpreter
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _common import load_wan_accel, write_json  # noqa: E402

# name: (x shape (N, Cin, T, H, W), Cout, kt, k, padding)
SHAPES = {
    "decoder": ((1, 96, 6, 612, 832), 96, 3, 3, (0, 1, 1)),
    "encoder": ((1, 96, 6, 674, 832), 96, 3, 3, (0, 1, 1)),
    "head": ((1, 96, 6, 612, 832), 3, 3, 3, (0, 1, 1)),
    "c192": ((1, 192, 6, 312, 416), 192, 3, 3, (0, 1, 1)),
}
CPU_SHAPES = {  # borders, a partial pixel block, a partial channel chunk (48 in 32s), Cout 3
    "decoder": ((1, 32, 4, 5, 7), 32, 3, 3, (0, 1, 1)),
    "head": ((1, 32, 4, 5, 7), 3, 3, 3, (0, 1, 1)),
    "c48": ((1, 48, 3, 4, 6), 48, 3, 3, (0, 0, 1)),
}
OK_REL = 2e-2


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device, reps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in pairs:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return statistics.median(s.elapsed_time(e) for s, e in pairs)


def cuda_kernels(fn, device) -> list[str] | None:
    """Names of the CUDA kernels one call launches (None off CUDA or when the profiler fails)."""
    if device.type != "cuda":
        return None
    try:
        from torch.profiler import ProfilerActivity, profile

        sync(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            sync(device)
        return sorted({e.key for e in prof.key_averages() if e.device_type.name == "CUDA" and "Memcpy" not in e.key})
    except Exception as exc:  # the profiler is a diagnostic, never fatal
        return [f"profiler failed: {type(exc).__name__}: {exc}"[:200]]


def errors(y: torch.Tensor, ref: torch.Tensor) -> dict:
    d = (y.float() - ref).abs().max().item()
    rel = d / max(ref.abs().max().item(), 1e-30)
    return {"max_abs": float(f"{d:.4g}"), "rel_error": float(f"{rel:.4g}"), "ok": bool(rel <= OK_REL)}


def compiled_kernels(ct, device) -> dict:
    """{cache key: compiled kernel} of the Triton kernel so far (Triton's own cache; best effort)."""
    try:
        index = device.index if device.index is not None else torch.cuda.current_device()
        return dict(ct.kernel().device_caches[index][0])
    except Exception:
        return {}


def resources(kernel) -> dict:
    out = {}
    for name, attr in (("regs", "n_regs"), ("spills", "n_spills")):
        try:
            out[name] = getattr(kernel, attr)
        except Exception:
            pass
    try:
        out["shared_bytes"] = kernel.metadata.shared
    except Exception:
        pass
    return out


class ShapeBench:
    def __init__(self, name, spec, device, dtype, reps, warmup):
        (n, cin, t, h, w), cout, kt, k, padding = spec
        self.device, self.reps, self.warmup, self.padding = device, reps, warmup, padding
        g = torch.Generator(device=device).manual_seed(0)
        self.x = torch.randn((n, cin, t, h, w), generator=g, device=device).to(dtype).contiguous(
            memory_format=torch.channels_last_3d)
        self.w = (torch.randn((cout, cin, kt, k, k), generator=g, device=device) * (cin * kt * k * k) ** -0.5).to(dtype)
        self.b = (torch.randn((cout,), generator=g, device=device) * 0.1).to(dtype)
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False  # the reference is float32, not TF32
        try:
            self.ref = F.conv3d(self.x.float(), self.w.float(), self.b.float(), padding=padding)
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
        t_out, h_out, w_out = self.ref.shape[2:]
        self.flop = 2.0 * n * cout * cin * kt * k * k * t_out * h_out * w_out
        self.result = {"x": list(self.x.shape), "w": list(self.w.shape), "padding": list(padding),
                       "dtype": str(dtype).replace("torch.", ""), "gflop": round(self.flop / 1e9, 2),
                       "cudnn": [], "triton": []}

    def measure(self, fn, out) -> dict:
        try:
            entry = errors(out, self.ref)
            ms = median_ms(fn, self.device, self.reps, self.warmup)
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"[:500]}
        return {"ms": float(f"{ms:.5g}"), "tflops": float(f"{self.flop / ms / 1e9:.4g}"), **entry}

    def cudnn(self) -> None:
        x, w, b, pad = self.x, self.w, self.b, self.padding
        cin, cout = x.shape[1], w.shape[0]
        x128 = w128i = w128 = b128 = None
        if cin < 128:  # zero channels: the same sums, a channel count cuDNN may like better
            x128 = torch.zeros((x.shape[0], 128, *x.shape[2:]), device=x.device, dtype=x.dtype).contiguous(
                memory_format=torch.channels_last_3d)
            x128[:, :cin] = x
            w128i = torch.zeros((cout, 128, *w.shape[2:]), device=w.device, dtype=w.dtype)
            w128i[:, :cin] = w
            if cout < 128:
                w128 = torch.zeros((128, 128, *w.shape[2:]), device=w.device, dtype=w.dtype)
                w128[:cout, :cin] = w
                b128 = torch.zeros(128, device=b.device, dtype=b.dtype)
                b128[:cout] = b
        variants = [
            ("default", False, lambda: F.conv3d(x, w, b, padding=pad)),
            ("benchmark", True, lambda: F.conv3d(x, w, b, padding=pad)),
            ("benchmark_no_bias", True, lambda: F.conv3d(x, w, None, padding=pad)),
        ]
        if x128 is not None:
            variants += [
                ("cin128", False, lambda: F.conv3d(x128, w128i, b, padding=pad)),
                ("cin128_benchmark", True, lambda: F.conv3d(x128, w128i, b, padding=pad)),
            ]
        if w128 is not None:
            variants.append(
                ("cin128_cout128_benchmark", True, lambda: F.conv3d(x128, w128, b128, padding=pad)[:, :cout]))
        old = torch.backends.cudnn.benchmark
        try:
            for name, bench, fn in variants:
                torch.backends.cudnn.benchmark = bench
                try:
                    out = fn()  # with benchmark: cuDNN's search happens here
                    sync(self.device)
                    if name == "benchmark_no_bias":
                        out = out + self.b.reshape(1, -1, 1, 1, 1)
                except Exception as exc:
                    self.result["cudnn"].append({"name": name, "error": f"{type(exc).__name__}: {exc}"[:500]})
                    continue
                entry = {"name": name, **self.measure(fn, out), "kernels": cuda_kernels(fn, self.device)}
                self.result["cudnn"].append(entry)
                say(name, entry)
        finally:
            torch.backends.cudnn.benchmark = old

    def triton(self, ct, configs) -> None:
        packed = ct.pack_weight(self.w, self.x.dtype)  # the caller caches this: not in the timing
        x, w, b, pad = self.x, self.w, self.b, self.padding
        for i, cfg in configs:
            entry = {"config": i, **cfg}
            before = compiled_kernels(ct, self.device)
            try:
                t0 = time.perf_counter()
                out = ct.conv3d(x, w, b, pad, cfg, packed=packed)
                sync(self.device)
                entry["first_call_s"] = round(time.perf_counter() - t0, 2)
            except Exception as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"[:1500]
                self.result["triton"].append(entry)
                say(f"triton {i}", entry)
                continue
            new = [k for key, k in compiled_kernels(ct, self.device).items() if key not in before]
            if new:
                entry.update(resources(new[-1]))
            entry.update(self.measure(lambda: ct.conv3d(x, w, b, pad, cfg, packed=packed), out))
            self.result["triton"].append(entry)
            say(f"triton {i}", entry)
        ok = [e for e in self.result["triton"] if e.get("ok")]
        base = [e for e in self.result["cudnn"] if "ms" in e and e.get("ok")]
        if ok and base:
            best, anchor = min(ok, key=lambda e: e["ms"]), min(base, key=lambda e: e["ms"])
            self.result["best"] = {"triton_config": best["config"], "triton_ms": best["ms"], "cudnn": anchor["name"],
                                   "cudnn_ms": anchor["ms"], "speedup": round(anchor["ms"] / best["ms"], 3)}


def say(name, entry) -> None:
    keys = ("ms", "tflops", "rel_error", "ok", "first_call_s", "regs", "spills", "error")
    print(f"  {name}: " + ", ".join(f"{k} {entry[k]}" for k in keys if k in entry), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default=None, help="comma list of " + ", ".join(SHAPES))
    ap.add_argument("--configs", default=None, help="comma list of indices into conv3d_triton.CONFIGS (default: all)")
    ap.add_argument("--reps", type=int, default=None, help="timed calls per variant (default 20; CPU 1)")
    ap.add_argument("--warm-cache", action="store_true",
                    help="keep Triton's usual cache (first_call_s may then include no compile)")
    ap.add_argument("--no-cudnn", action="store_true", help="skip the cuDNN variants")
    ap.add_argument("--cpu-check", action="store_true", help="CPU under TRITON_INTERPRET=1, tiny shapes, float32")
    a = ap.parse_args()

    cache = None
    if not a.warm_cache:  # a fresh cache: the first call's seconds include the compile
        cache = tempfile.TemporaryDirectory(prefix="conv_micro_triton_")
        os.environ["TRITON_CACHE_DIR"] = cache.name
    load_wan_accel()
    from wan_accel.vae_accel.kernels import conv3d_triton as ct

    import triton

    if a.cpu_check:
        device, dtype, shapes, reps, warmup = torch.device("cpu"), torch.float32, CPU_SHAPES, a.reps or 1, 0
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device (use --cpu-check on a CPU machine)")
        device, dtype, shapes, reps, warmup = torch.device("cuda"), torch.bfloat16, SHAPES, a.reps or 20, 3
    names = a.shapes.split(",") if a.shapes else list(shapes)
    picked = [int(v) for v in a.configs.split(",")] if a.configs else range(len(ct.CONFIGS))
    configs = [(i, ct.CONFIGS[i]) for i in picked]
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (TRITON_INTERPRET=1)",
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "reps": reps, "warmup": warmup, "fresh_triton_cache": cache is not None, "ok_rel_error": OK_REL,
        "configs": [dict(cfg, index=i) for i, cfg in configs], "shapes": {},
    }
    t_start = time.perf_counter()
    try:
        for name in names:
            print(f"{name}: {shapes[name]}", flush=True)
            bench = ShapeBench(name, shapes[name], device, dtype, reps, warmup)
            result["shapes"][name] = bench.result
            if not a.no_cudnn:
                bench.cudnn()
            bench.triton(ct, configs)
            del bench
            if device.type == "cuda":
                torch.cuda.empty_cache()
            result["seconds"] = round(time.perf_counter() - t_start, 1)
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(__import__("json").dumps(result, indent=1))
    finally:
        if cache is not None:
            cache.cleanup()
    write_json(a.out, result)


if __name__ == "__main__":
    main()
