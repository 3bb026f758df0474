"""Shared benchmark plumbing: import this repo as ``wan_accel`` (as ComfyUI would) and ComfyUI itself."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def load_wan_accel():
    """This checkout as ``wan_accel``, through the one loader the tests use too (tools/package_loader.py)."""
    tools = str(REPO / "tools")
    if tools not in sys.path:
        sys.path.insert(0, tools)
    from package_loader import load_wan_accel as load

    return load()


def load_comfy(path: str | None):
    """Put a ComfyUI checkout on sys.path (its modules are the anchors we measure against)."""
    if not path:
        return None
    sys.path.insert(0, str(Path(path).resolve()))
    import comfy.cli_args

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401

    return path


def vae_bench_args(description: str, out: str) -> argparse.ArgumentParser:
    """The options bench/vae_decode.py and bench/vae_encode.py share; each adds its own."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comfy", required=True, help="ComfyUI checkout (the anchors)")
    p.add_argument("--frames", type=int, nargs="+", default=[81, 161])
    p.add_argument("--size", default="1216x832", help="HxW of the Wan 2.1 case")
    p.add_argument("--wan22", action="store_true", help="also the Wan 2.2 VAE at 1280x704")
    p.add_argument("--warm", type=int, default=2, help="calls after each configuration's first; the best is warm_s")
    p.add_argument("--out", default=out)
    return p


def vae_bench_start(a) -> tuple[torch.device, int, int, dict]:
    """What every VAE bench does first: ComfyUI (``a.comfy``) and this package importable, the CUDA
    device, the frame size from ``a.size`` ("HxW") and the result's header."""
    load_comfy(a.comfy)
    load_wan_accel()
    H, W = (int(v) for v in a.size.split("x"))
    return torch.device("cuda"), H, W, {"device": torch.cuda.get_device_name(), "torch": torch.__version__}


def make_executor(execution):
    """ComfyUI's ``PromptExecutor`` without a server (0.3.64 to 0.33 signatures), classic cache."""
    import inspect

    class _Server:
        client_id = None
        last_node_id = None
        last_prompt_id = None
        sockets_metadata: dict = {}

        def send_sync(self, *args, **kwargs):
            pass

        def queue_updated(self):
            pass

    params = inspect.signature(execution.PromptExecutor.__init__).parameters
    if "cache_args" in params:
        # 0.33 reads "ram_inactive" on every prompt; older versions ignore the extra key
        return execution.PromptExecutor(_Server(), cache_type=False, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
    return execution.PromptExecutor(_Server(), cache_type=False)


def randomise_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights scaled like a trained net (1/sqrt(fan_in)); norms at 1, biases at 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif "gamma" in name:
                p.fill_(1.0)
            else:
                p.zero_()
    return model.eval()


class Timer:
    """Wall time with device sync and peak allocated memory over the block."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_gib = torch.cuda.max_memory_allocated(self.device) / 2**30
            self.extra_gib = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**30
        else:
            self.peak_gib = self.extra_gib = 0.0
        self.seconds = time.perf_counter() - self.t0


def error_stats(out01: torch.Tensor, ref01: torch.Tensor) -> dict:
    """Max abs error and PSNR (dB) of two videos in [0, 1]."""
    d = (out01.float() - ref01.float())
    mse = d.pow(2).mean().item()
    return {"max_abs": d.abs().max().item(), "psnr_db": (10 * math.log10(1.0 / mse)) if mse > 0 else float("inf")}


def write_json(path: str, data: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=1))
    print(json.dumps(data, indent=1))


def timed(device: torch.device, fn, warm: int = 0):
    """(output, {"s", "peak_gib", "extra_gib"}) of one call, or (None, {"oom": True}) when it runs out of
    memory; ``s`` is the first call's seconds. With ``warm`` > 0 the call is repeated that many times
    (outputs dropped) and ``warm_s`` is the best of them: a configuration's first call in a process pays
    for new shapes (cuDNN plans, kernel binaries, the allocator's growth) that later calls do not."""
    import gc

    gc.collect()
    try:
        with Timer(device) as t:
            out = fn()
        stats = {"s": round(t.seconds, 3), "peak_gib": round(t.peak_gib, 3), "extra_gib": round(t.extra_gib, 3)}
        again = []
        for _ in range(warm):
            with Timer(device) as t:
                fn()
            again.append(t.seconds)
    except torch.OutOfMemoryError:
        return None, {"oom": True}
    if again:
        stats["warm_s"] = round(min(again), 3)
    return out, stats


def speedups(row: dict, mine: str, anchors) -> None:
    """``row[mine]`` gets its speedup over each anchor in ``row``: first calls (``s``) and, where both have
    them, best warm calls (``warm_s``)."""
    for anchor in anchors:
        for key, label in (("s", ""), ("warm_s", "_warm")):
            if key in row.get(mine, {}) and key in row.get(anchor, {}):
                row[mine][f"speedup_vs_{anchor}{label}"] = round(row[anchor][key] / row[mine][key], 3)
