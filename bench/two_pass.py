"""Wan 2.2 14B i2v two-pass (4-step LoRA) in real ComfyUI: stock vs accelerated, same seed.

    python bench/two_pass.py --comfy /path/to/ComfyUI --out two_pass.json            # GPU, full width
    python bench/two_pass.py --comfy /path/to/ComfyUI --out two_pass.json --small    # CPU smoke run, < 1 min

Run it with the ComfyUI install's Python from the repository root. In-process: ComfyUI's own
``PromptExecutor`` runs the shipped API prompts ``workflows/api/wan22_i2v_14B_4step_ab_stock.api.json`` and
``..._ab_accel.api.json`` (the A/B graph with its ACCELERATION group bypassed / active), so every core
node is ComfyUI's. What the bench changes, and why:

* models: random weights with the real key names and file layout (``fixtures/build.py``), written to a
  temporary models folder. Full mode: the experts at the real width (dim 5120, 40 heads of 128, ffn
  13824) with ``--layers`` of the real 40 blocks (default 10); LoRAs rank 64 on every block linear;
  the real Wan 2.1 VAE size. ``sampler_s_per_40_blocks`` scales the sampler nodes' seconds by
  40 / layers (the blocks are all the work of a step; embeddings and head are negligible);
  load times and VRAM are *not* scaled. Weights are stored bf16 and loaded with UNETLoader
  ``weight_dtype`` ``--unet-dtype`` (default fp8_e4m3fn, as the real fp8 files compute).
* text: the 5.7B umt5 encoder is replaced by random ``[1, --tokens, 4096]`` embeddings from a bench-only
  node (``CLIPLoader`` removed, both ``CLIPTextEncode`` replaced; same node ids);
* the decoded frames are also captured in memory by a bench-only output node, to compare the paths.

Each variant runs ``--repeats`` times, alternating (stock, accel, accel, stock, ...), in one executor as
a user re-queues the graph: repeat i has its own seed and start image, so everything from the image and
the samplers on runs again while the loaders stay cached and the models stay loaded. Repeat 0 pays the
loads, the first-call costs and auto's tuning; the steady state is the median of the later repeats.
Reported per run: wall seconds, per-node telemetry (seconds, GPU seconds, peak VRAM, steps), peak VRAM
(the largest per-node peak), ``e2e_s_at_40_blocks`` (wall with the sampler seconds scaled to 40 blocks)
and the stock-vs-accel frame differences of the same repeat. ``--backend`` sets both attention nodes
(default ``auto``); ``--sdpa-check`` adds one accel run with ``sdpa`` on both experts, whose frames must
match stock's up to the VAE's float noise.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _common import load_wan_accel, make_executor

REPO = Path(__file__).resolve().parent.parent
WF = REPO / "workflows" / "api"
CAPTURED: dict = {}


def setup_comfy(path: str, cpu: bool):
    sys.path.insert(0, str(Path(path).resolve()))
    from comfy.cli_args import args

    if cpu:
        args.cpu = True
    import comfy.utils
    import execution
    import nodes
    from comfy_execution.progress import get_progress_state
    from comfy_execution.utils import get_executing_context

    asyncio.run(nodes.init_builtin_extra_nodes())

    def hook(value, total, preview_image, prompt_id=None, node_id=None):  # what main.py's hook feeds telemetry
        ctx = get_executing_context()
        if node_id is None and ctx is not None:
            node_id = ctx.node_id
        if node_id is not None:
            get_progress_state().update_progress(node_id, value, total, None)

    comfy.utils.set_progress_bar_global_hook(hook)
    return nodes, execution


def register_nodes(nodes) -> None:
    """Our nodes (as ComfyUI registers a V3 extension's list) and the two bench-only nodes."""
    import torch

    load_wan_accel()
    from wan_accel.nodes import attention_nodes, vae_nodes

    for cls in vae_nodes.NODES + attention_nodes.NODES:
        nodes.NODE_CLASS_MAPPINGS[cls.GET_SCHEMA().node_id] = cls

    class WanAccelBenchConditioning:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"seed": ("INT", {"default": 0}), "tokens": ("INT", {"default": 512})}}

        RETURN_TYPES = ("CONDITIONING",)
        FUNCTION = "make"
        CATEGORY = "bench"

        def make(self, seed, tokens):
            g = torch.Generator().manual_seed(seed)
            return ([[torch.randn(1, tokens, 4096, generator=g) * 0.1, {}]],)

    class WanAccelBenchCapture:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"images": ("IMAGE",), "key": ("STRING", {"default": "frames"})}}

        RETURN_TYPES = ()
        FUNCTION = "capture"
        OUTPUT_NODE = True
        CATEGORY = "bench"

        def capture(self, images, key):
            CAPTURED[key] = images.detach().float().cpu()
            return {}

    nodes.NODE_CLASS_MAPPINGS["WanAccelBenchConditioning"] = WanAccelBenchConditioning
    nodes.NODE_CLASS_MAPPINGS["WanAccelBenchCapture"] = WanAccelBenchCapture


def bench_prompt(path: Path, opts, key: str, repeat: int = 0, backend: str | None = None) -> tuple[dict, list[str]]:
    prompt = json.loads(path.read_text(encoding="utf-8"))
    for nid, node in list(prompt.items()):
        t = node["class_type"]
        if t == "CLIPLoader":
            del prompt[nid]
        elif t == "CLIPTextEncode":
            prompt[nid] = {"class_type": "WanAccelBenchConditioning", "inputs": {"seed": int(nid), "tokens": opts.tokens}}
        elif t == "WanImageToVideo":
            node["inputs"].update(width=opts.width, height=opts.height, length=opts.frames)
        elif t == "UNETLoader":
            node["inputs"]["weight_dtype"] = opts.unet_dtype
        elif t == "WanAccelAttention":
            node["inputs"]["backend"] = backend or opts.backend
        elif t == "LoadImage":
            node["inputs"]["image"] = start_image_name(repeat)
        elif t == "KSamplerAdvanced":
            node["inputs"]["noise_seed"] = opts.seed + repeat if node["inputs"]["add_noise"] == "enable" else 0
            node["inputs"]["steps"] = 2 * opts.split
            if node["inputs"]["start_at_step"] == 0:
                node["inputs"]["end_at_step"] = opts.split
            else:
                node["inputs"].update(start_at_step=opts.split, end_at_step=2 * opts.split)
        elif t == "SaveVideo":
            node["inputs"]["filename_prefix"] = f"video/two_pass_{key}"
    decode = next(nid for nid, n in prompt.items() if n["class_type"] == "VAEDecode")
    prompt["9001"] = {"class_type": "WanAccelBenchCapture", "inputs": {"images": [decode, 0], "key": key}}
    outputs = ["9001"] + ([nid for nid, n in prompt.items() if n["class_type"] == "SaveVideo"] if opts.save_video
                          else [])
    if not opts.save_video:
        for nid in [nid for nid, n in prompt.items() if n["class_type"] in ("SaveVideo", "CreateVideo")]:
            del prompt[nid]
    return prompt, outputs


def start_image_name(repeat: int) -> str:
    return f"wan_accel_start_{repeat}.png"


def compare(a, b) -> dict:
    d = (a - b).abs()
    mse = float((a - b).pow(2).mean())
    return {"shape": list(a.shape), "max_abs": round(float(d.max()), 6), "mean_abs": round(float(d.mean()), 7),
            "psnr_db": math.inf if mse == 0 else round(10 * math.log10(1 / mse), 2)}


def describe_run(key: str, repeat: int, wall: float, prompt: dict, rec: dict, layers: int, cuda: bool) -> dict:
    per_node = []
    sampler_s = 0.0
    for r in rec.get("nodes", []):
        node = prompt.get(r["node_id"], {})
        entry = {k: r.get(k) for k in ("node_id", "type", "seconds", "gpu_s", "vram_peak_allocated_mb",
                                       "model_load_s", "partial_load", "offloaded_mb") if r.get(k) is not None}
        if r.get("steps"):
            entry["steps"] = {k: r["steps"].get(k) for k in ("count", "mean_s", "max_s")}
        notes = [n for n in r.get("notes", []) if n.get("name") == "attention_backend"]
        if notes:
            entry["attention"] = sorted({f"{n['backend']} ({n['reason'][:60]})" for n in notes})
        phases: dict = {}
        for p in r.get("phases", []):
            phases[p["name"]] = round(phases.get(p["name"], 0.0) + p.get("seconds", 0.0), 4)
        if phases:
            entry["phases_s"] = phases
        if node.get("class_type") == "KSamplerAdvanced":
            sampler_s += r.get("seconds", 0.0)
        per_node.append(entry)
    nodes_ = rec.get("nodes", [])
    return {"variant": key, "repeat": repeat, "wall_s": round(wall, 3), "telemetry_wall_s": rec.get("wall_s"),
            "sampler_s": round(sampler_s, 3),
            "sampler_s_per_40_blocks": round(sampler_s * 40 / layers, 3),
            # the blocks are all of a step's work: the rest of the run (VAE, loads) is not scaled
            "e2e_s_at_40_blocks": round(wall - sampler_s + sampler_s * 40 / layers, 3),
            # telemetry resets the allocator's peak at every node start: the run's peak is the nodes' max
            "peak_vram_allocated_mb": max((r.get("vram_peak_allocated_mb") or 0 for r in nodes_), default=None)
            if cuda else None,
            "peak_vram_node": max(nodes_, key=lambda r: r.get("vram_peak_allocated_mb") or 0, default={}).get("type")
            if cuda else None,
            "totals": rec.get("totals"), "nodes": per_node}


def summarize(runs: list[dict], repeats: int) -> dict:
    """Median of the steady-state repeats (all but the warm-up, when there are more than one) per variant,
    each node's median seconds, and stock / accel ratios."""
    steady = [r for r in runs if r["repeat"] >= (1 if repeats > 1 else 0)]
    out: dict = {"repeats_used": sorted({r["repeat"] for r in steady})}
    for key in sorted({r["variant"] for r in steady}):
        rs = [r for r in steady if r["variant"] == key]
        entry = {k: round(statistics.median(r[k] for r in rs), 3)
                 for k in ("wall_s", "sampler_s", "sampler_s_per_40_blocks", "e2e_s_at_40_blocks")}
        entry["peak_vram_allocated_mb"] = max((r["peak_vram_allocated_mb"] or 0 for r in rs), default=None)
        per_type: dict = {}
        for r in rs:
            for n in r["nodes"]:
                per_type.setdefault(f"{n['node_id']} {n['type']}", []).append(n.get("seconds", 0.0))
        entry["node_s"] = {k: round(statistics.median(v), 3) for k, v in per_type.items()}
        out[key] = entry
    if "stock" in out and "accel" in out:
        out["speedup"] = {k: round(out["stock"][k] / out["accel"][k], 3)
                          for k in ("wall_s", "sampler_s", "e2e_s_at_40_blocks") if out["accel"][k]}
    return out


def comfy_version(opts) -> str | None:
    try:
        sys.path.insert(0, str(Path(opts.comfy).resolve()))
        import comfyui_version

        return comfyui_version.__version__
    except Exception:
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfy", required=True, help="ComfyUI checkout (0.3.64 or 0.8.0)")
    ap.add_argument("--out", required=True, help="result JSON")
    ap.add_argument("--small", action="store_true", help="tiny CPU run: dim 256, 2 blocks, 64x64, 5 frames")
    ap.add_argument("--layers", type=int, default=10, help="expert blocks built (real: 40)")
    ap.add_argument("--dim", type=int, default=5120)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--height", type=int, default=1216)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--split", type=int, default=2, help="steps per expert (2+2 = the 4-step LoRA schedule)")
    ap.add_argument("--tokens", type=int, default=512, help="text tokens (umt5 output length)")
    ap.add_argument("--backend", default="auto", help="attention backend of both WanAccelAttention nodes")
    ap.add_argument("--unet-dtype", default=None, help="UNETLoader weight_dtype (default fp8_e4m3fn; small: default)")
    ap.add_argument("--repeats", type=int, default=3, help="repeat 0 is the warm-up; the rest are the steady state")
    ap.add_argument("--sdpa-check", action=argparse.BooleanOptionalAction, default=True,
                    help="one more accel run with sdpa on both experts, compared with stock's frames")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--save-video", action="store_true", help="also run CreateVideo + SaveVideo")
    ap.add_argument("--work", help="folder for models/input/output (default: a temporary one)")
    opts = ap.parse_args(argv)
    if opts.small:
        opts.dim, opts.layers, opts.width, opts.height, opts.frames, opts.tokens = 256, 2, 64, 64, 5, 16
        opts.repeats = min(opts.repeats, 2)
    opts.unet_dtype = opts.unet_dtype or ("default" if opts.small else "fp8_e4m3fn")

    import torch

    cuda = torch.cuda.is_available() and not opts.small
    logging.basicConfig(level=logging.WARNING)
    nodes, execution = setup_comfy(opts.comfy, cpu=not cuda)
    import folder_paths

    load_wan_accel()
    from wan_accel.fixtures import build as fixtures

    work = Path(opts.work or tempfile.mkdtemp(prefix="wan_accel_two_pass_"))
    t0 = time.perf_counter()
    manifest = fixtures.build(work / "models", None, dim=opts.dim, layers=opts.layers, rank=4 if opts.small else 64,
                              device="cuda" if cuda else "cpu")
    build_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.empty_cache()  # the generated weights are on disk now; ComfyUI loads them from there
    for folder in ("diffusion_models", "loras", "vae"):
        folder_paths.add_model_folder_path(folder, str(work / "models" / folder), is_default=True)
    for sub in ("input", "output", "temp"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    folder_paths.set_input_directory(str(work / "input"))
    folder_paths.set_output_directory(str(work / "output"))
    folder_paths.set_temp_directory(str(work / "temp"))
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(opts.seed)
    for i in range(opts.repeats):
        Image.fromarray(rng.integers(0, 255, (opts.height, opts.width, 3), dtype=np.uint8)).save(
            work / "input" / start_image_name(i))

    register_nodes(nodes)
    from wan_accel.nodes import telemetry_nodes
    from wan_accel.telemetry.recorder import Recorder
    from wan_accel.telemetry.store import RunStore

    recorder = Recorder(models=telemetry_nodes.loaded_models_snapshot, store=RunStore(lambda: str(work / "output")),
                        save_in_background=False)
    enabled, reason = telemetry_nodes.install_hooks(recorder)
    executor = make_executor(execution)

    variants = {"stock": WF / "wan22_i2v_14B_4step_ab_stock.api.json",
                "accel": WF / "wan22_i2v_14B_4step_ab_accel.api.json"}
    runs: list[dict] = []
    frames: dict = {}
    result = {
        "config": {k: v for k, v in vars(opts).items() if k not in ("out", "comfy", "work")},
        "scaling": (f"experts at dim {opts.dim} ({opts.dim // 128} heads of 128), {opts.layers} of the real 40 "
                    "blocks; sampler_s_per_40_blocks = sampler seconds x 40 / layers; e2e_s_at_40_blocks = wall "
                    "with the samplers' seconds scaled so; loads and VRAM unscaled"),
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__, "comfyui": str(Path(opts.comfy).resolve()), "comfyui_version": comfy_version(opts),
        "fixture_build_s": round(build_s, 1), "fixture": manifest, "telemetry": {"enabled": enabled, "reason": reason},
        "runs": runs,
    }
    schedule = []
    for i in range(opts.repeats):
        schedule += [(i, v, None) for v in (("stock", "accel") if i % 2 == 0 else ("accel", "stock"))]
    if opts.sdpa_check:
        schedule.append((opts.repeats - 1, "accel", "sdpa"))
    for i, variant, backend in schedule:
        key = variant if backend is None else f"{variant}_{backend}"
        prompt, outputs = bench_prompt(variants[variant], opts, key, repeat=i, backend=backend)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        executor.execute(prompt, uuid.uuid4().hex, {}, outputs)
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        if not executor.success:
            raise SystemExit(f"{key} failed: {json.dumps(executor.status_messages[-1], default=str)[:3000]}")
        run = describe_run(key, i, wall, prompt, recorder.last_run or {}, opts.layers, cuda)
        runs.append(run)
        for old in [k for k in frames if k[1] < i]:  # ~1 GB each at full size
            del frames[old]
        frames[(key, i)] = CAPTURED.pop(key)
        print(f"{key} #{i}: {wall:.2f} s (samplers {run['sampler_s']:.2f} s, "
              f"{run['e2e_s_at_40_blocks']:.2f} s at 40 blocks)", file=sys.stderr)
        # written after every run: a run cut short by a time limit still leaves its numbers
        # stock vs accel: attention + VAE numerics; stock vs accel_sdpa: the VAE engine's alone;
        # accel vs accel_sdpa: the attention backend's alone
        for name, one, other in (("frames_stock_vs_accel", "stock", "accel"),
                                 ("frames_stock_vs_accel_sdpa", "stock", "accel_sdpa"),
                                 ("frames_accel_vs_accel_sdpa", "accel", "accel_sdpa")):
            if (one, i) in frames and (other, i) in frames:
                result[name] = compare(frames[(one, i)], frames[(other, i)]) | {"repeat": i}
        result["summary"] = summarize(runs, opts.repeats)
        Path(opts.out).write_text(json.dumps(result, indent=1, default=str))

    if not opts.work:  # the fixture models of a full run are gigabytes
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: result.get(k) for k in ("summary", "frames_stock_vs_accel", "frames_stock_vs_accel_sdpa",
                                                 "frames_accel_vs_accel_sdpa")},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
