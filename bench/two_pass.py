"""Wan 2.2 14B i2v two-pass (4-step LoRA) in real ComfyUI: stock vs ours, same seeds, on emulated cards.

    python bench/two_pass.py --comfy /tmp/comfy-0.33.0 --out cell.json --vram-gb 16      # GPU: one cell
    python bench/two_pass.py --comfy /path/to/ComfyUI --out small.json --small           # CPU smoke run, < 1 min

Run it with the ComfyUI install's Python. In-process, ComfyUI started as its main.py starts it
(``comfy_boot``: cuda_malloc, Dynamic VRAM on 0.33 unless ``--comfy-dynamic-vram off``), on a card of
``--vram-gb`` GiB (``card``: a holder process leaves that much free before this process touches CUDA).
ComfyUI's own ``PromptExecutor`` runs the shipped API prompts ``workflows/api/wan22_i2v_14B_4step_ab_stock``
and ``..._ab_accel.api.json`` (the A/B graph with its ACCELERATION group bypassed / active), so every core
node is ComfyUI's. What the bench changes, and why:

* models (``models.py``, cached in ``--models``, reused by a later command on a still-warm machine):
  random weights with the real key names; the experts at the real width (dim 5120, 40 heads of 128, ffn
  13824) and ``--layers`` of the real 40 blocks (default: all 40), block matrices in fp8_e4m3fn on disk as
  in the real ``*_fp8_scaled`` files, written tensor by tensor from the GPU (2 x ~14 GB); LoRAs rank 64 on
  every block linear; the real Wan 2.1 VAE size. ``sampler_s_per_40_blocks`` scales the sampler nodes'
  seconds by 40 / layers when fewer blocks are built; load times and VRAM are never scaled.
* text: the 5.7B umt5 encoder is replaced by random ``[1, --tokens, 4096]`` embeddings (``bench_nodes``;
  ``CLIPLoader`` removed, both ``CLIPTextEncode`` replaced, same node ids);
* the decoded frames are captured in memory by a bench-only output node, to compare the paths.

The plan (``--paths``, most valuable first; ``--warm`` re-queues each): for each path a *first run* (fresh
executor cache, every model unloaded: what a user gets after starting ComfyUI, except the OS file cache)
then warm re-queues (new seed and start image; loaders cached, models left as ComfyUI left them). Paths:
``stock``; ``accel_sdpa`` (our VAE patch, ``sdpa`` on both experts: the attention stock uses, so this is the
VAE engine's gain alone and its frames must match stock's to bf16 noise); ``accel_auto`` (``auto``
attention; its first run pays the tuning). A run that fails (out of memory on a small card) is recorded
with its error and the plan goes on. ``--budget-s`` skips runs that would not finish in the time left.
JSON is written after every run. Reported per run: wall seconds, per-node telemetry (seconds, GPU
seconds, peak VRAM, steps, attention choice, VAE phases, models loaded / unloaded, partial loads and
offloaded MB per expert), model loads, the device's peak memory in use (sampled), and frame PSNR
between the paths at the same repeat (same seed and image).
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import card as cards
import comfy_boot

comfy_boot.before_torch(sys.argv[1:])  # before any torch import (models, _common)
import models
import run_report
from _common import load_wan_accel, make_executor

REPO = Path(__file__).resolve().parent.parent
WF = REPO / "workflows" / "api"
PATHS = {"stock": ("stock", None), "accel_sdpa": ("accel", "sdpa"), "accel_auto": ("accel", "auto"),
         "accel": ("accel", None)}  # variant: (prompt, attention backend override)
DEFAULT_MODELS = Path(tempfile.gettempdir()) / "wan_accel_bench_models"


def register_nodes(nodes) -> None:
    """Our nodes (as ComfyUI registers a V3 extension's list) and the bench-only nodes."""
    import bench_nodes  # a V3 node module: needs ComfyUI on sys.path

    load_wan_accel()
    from wan_accel.nodes import attention_nodes, vae_nodes

    for cls in vae_nodes.NODES + attention_nodes.NODES:
        nodes.NODE_CLASS_MAPPINGS[cls.GET_SCHEMA().node_id] = cls
    nodes.NODE_CLASS_MAPPINGS.update(bench_nodes.NODE_CLASS_MAPPINGS)


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
    prompt["9001"] = {"class_type": "WanAccelBenchCapture", "inputs": {"images": [decode, 0], "key": key, "keep": True}}
    outputs = ["9001"] + ([nid for nid, n in prompt.items() if n["class_type"] == "SaveVideo"] if opts.save_video
                          else [])
    if not opts.save_video:
        for nid in [nid for nid, n in prompt.items() if n["class_type"] in ("SaveVideo", "CreateVideo")]:
            del prompt[nid]
    return prompt, outputs


def start_image_name(repeat: int) -> str:
    return f"wan_accel_start_{repeat}.png"


def plan(paths: list[str], warm: int) -> list[tuple[str, int]]:
    """(variant, repeat) in run order: each path's first run (repeat 0) then its warm re-queues."""
    return [(p, i) for p in paths for i in range(1 + warm)]


def ensure_models(opts, cuda: bool) -> tuple[Path, dict]:
    """Small: bf16 fixtures on the CPU in the work folder. Full: fp8 experts written by ``models.py`` in a
    child process (its CUDA use must not fix this process's allocator before ComfyUI chooses it)."""
    if opts.small:
        out = Path(opts.work) / "models"
        return out, models.ensure(out, opts.dim, opts.layers, 4, fp8=False)
    out = Path(opts.models)
    cmd = [sys.executable, str(Path(__file__).with_name("models.py")), "--comfy", opts.comfy, "--out", str(out),
           "--dim", str(opts.dim), "--layers", str(opts.layers), "--rank", "64"] + ([] if cuda else ["--device", "cpu"])
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out, json.loads(done.stdout.strip().splitlines()[-1])


def setup_folders(work: Path, models_dir: Path, opts) -> None:
    import folder_paths
    import numpy as np
    from PIL import Image

    for folder in ("diffusion_models", "loras", "vae"):
        folder_paths.add_model_folder_path(folder, str(models_dir / folder), is_default=True)
    for sub in ("input", "output", "temp"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    folder_paths.set_input_directory(str(work / "input"))
    folder_paths.set_output_directory(str(work / "output"))
    folder_paths.set_temp_directory(str(work / "temp"))
    rng = np.random.default_rng(opts.seed)
    for i in range(1 + opts.warm):
        Image.fromarray(rng.integers(0, 255, (opts.height, opts.width, 3), dtype=np.uint8)).save(
            work / "input" / start_image_name(i))


def cold_start(execution):
    """A fresh executor (no cached node outputs) and no model loaded: a first run as after starting ComfyUI."""
    import comfy.model_management as mm

    mm.unload_all_models()
    gc.collect()
    mm.soft_empty_cache()
    return make_executor(execution)


def error_of(executor) -> str:
    for event, data in reversed(executor.status_messages):
        if event == "execution_error":
            return f"{data.get('node_type')}: {data.get('exception_type')}: {str(data.get('exception_message'))[:400]}"
    return "failed"


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfy", required=True, help="ComfyUI checkout (0.3.64, 0.8.0 or 0.33)")
    ap.add_argument("--out", required=True, help="result JSON (written after every run)")
    ap.add_argument("--small", action="store_true", help="tiny CPU run: dim 256, 2 blocks, 64x64, 5 frames")
    cards.add_arguments(ap)
    ap.add_argument("--comfy-dynamic-vram", choices=("on", "off"), default="on",
                    help="ComfyUI 0.33's Dynamic VRAM (comfy-aimdo), as its --disable-dynamic-vram; older releases lack it")
    ap.add_argument("--paths", default="stock,accel_sdpa,accel_auto", help=f"in run order, from {', '.join(PATHS)}")
    ap.add_argument("--warm", type=int, default=1, help="warm re-queues after each path's first run")
    ap.add_argument("--budget-s", type=float, default=0, help="skip runs that would end past this many seconds (0: none)")
    ap.add_argument("--layers", type=int, default=40, help="expert blocks built (real: 40)")
    ap.add_argument("--dim", type=int, default=5120)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--height", type=int, default=1216)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--split", type=int, default=2, help="steps per expert (2+2 = the 4-step LoRA schedule)")
    ap.add_argument("--tokens", type=int, default=512, help="text tokens (umt5 output length)")
    ap.add_argument("--backend", default="auto", help="attention backend of the plain 'accel' path")
    ap.add_argument("--unet-dtype", default=None, help="UNETLoader weight_dtype (default fp8_e4m3fn; small: default)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--save-video", action="store_true", help="also run CreateVideo + SaveVideo")
    ap.add_argument("--models", default=str(DEFAULT_MODELS), help="model cache folder (full size)")
    ap.add_argument("--work", help="folder for input/output (default: a temporary one)")
    opts = ap.parse_args(argv)
    if opts.small:
        opts.dim, opts.layers, opts.width, opts.height, opts.frames, opts.tokens = 256, 2, 64, 64, 5, 16
    opts.unet_dtype = opts.unet_dtype or ("default" if opts.small else "fp8_e4m3fn")
    unknown = [p for p in opts.paths.split(",") if p not in PATHS]
    if unknown:
        ap.error(f"--paths: unknown {unknown}; choose from {', '.join(PATHS)}")
    return opts


def main(argv=None) -> int:
    opts = parse_args(argv)
    t_start = time.perf_counter()
    import torch

    cuda = torch.cuda.is_available() and not opts.small
    logging.basicConfig(level=logging.WARNING)
    keep_work = bool(opts.work)
    opts.work = opts.work or tempfile.mkdtemp(prefix="wan_accel_two_pass_")
    work = Path(opts.work)
    load_wan_accel()
    if cuda:  # the fp8 files first (a child process), then the card, then ComfyUI
        models_dir, manifest = ensure_models(opts, cuda)
    card = cards.Card(opts.vram_gb).start(cuda)
    boot = comfy_boot.boot(opts.comfy, cpu=not cuda, dynamic_vram=opts.comfy_dynamic_vram == "on",
                           card_total_bytes=card.total_bytes)
    if not cuda:  # the CPU fixtures need ComfyUI's modules for their key names
        models_dir, manifest = ensure_models(opts, cuda)
    import bench_nodes
    import execution
    import nodes

    setup_folders(work, models_dir, opts)
    register_nodes(nodes)
    from wan_accel.nodes import telemetry_nodes
    from wan_accel.telemetry.recorder import Recorder
    from wan_accel.telemetry.store import RunStore

    recorder = Recorder(models=telemetry_nodes.loaded_models_snapshot, store=RunStore(lambda: str(work / "output")),
                        save_in_background=False)
    enabled, reason = telemetry_nodes.install_hooks(recorder)
    runs: list[dict] = []
    frames: dict = {}
    result = {
        "config": {k: v for k, v in vars(opts).items() if k not in ("out", "comfy", "work")},
        "scaling": (f"experts at dim {opts.dim} ({opts.dim // 128} heads of 128), {opts.layers} of the real 40 "
                    "blocks; sampler_s_per_40_blocks = sampler seconds x 40 / layers; e2e_s_at_40_blocks = wall "
                    "with the samplers' seconds scaled so; loads and VRAM unscaled"),
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__, "comfyui": str(Path(opts.comfy).resolve()), "comfy_boot": boot,
        "card": card.describe(), "models": manifest, "telemetry": {"enabled": enabled, "reason": reason},
        "runs": runs, "frames": {}, "skipped": [],
    }
    executor, last_s = None, {}
    for variant, i in plan(opts.paths.split(","), opts.warm):
        estimate = last_s.get(i == 0, 0.0)
        if opts.budget_s and time.perf_counter() - t_start + estimate > opts.budget_s:
            result["skipped"].append({"variant": variant, "repeat": i, "why": f"time budget ({estimate:.0f} s needed)"})
            continue
        if i == 0:
            executor = None  # its cache holds the last path's models
            executor = cold_start(execution)
        workflow, backend = PATHS[variant]
        prompt, outputs = bench_prompt(WF / f"wan22_i2v_14B_4step_ab_{workflow}.api.json", opts, variant, repeat=i,
                                       backend=backend or (opts.backend if workflow == "accel" else None))
        if cuda:
            torch.cuda.synchronize()
        sampler = cards.DeviceMemorySampler(torch) if cuda else None
        start = time.perf_counter()
        if sampler:
            with sampler:
                executor.execute(prompt, uuid.uuid4().hex, {}, outputs)
                torch.cuda.synchronize()
        else:
            executor.execute(prompt, uuid.uuid4().hex, {}, outputs)
        wall = time.perf_counter() - start
        last_s[i == 0] = wall
        run = run_report.describe_run(variant, i, wall, prompt, recorder.last_run or {}, opts.layers, cuda)
        if sampler:
            run["device_peak_used_gib"] = sampler.peak_used_gib(card)
        if not executor.success:
            run["error"] = error_of(executor)
            bench_nodes.CAPTURED.pop(variant, None)
        else:
            frames[(variant, i)] = bench_nodes.CAPTURED.pop(variant)
        runs.append(run)
        print(f"{variant} #{i}: {wall:.2f} s (samplers {run['sampler_s']:.2f} s)" + (f" FAILED {run['error']}"
              if run.get("error") else ""), file=sys.stderr)
        keys = sorted(frames, key=lambda k: (k[0] != "stock", k))  # stock vs each path, then the others pairwise
        for x, (one, j) in enumerate(keys):
            for other, k in keys[x + 1:]:
                if j == k:
                    result["frames"][f"{one}_vs_{other}_{j}"] = run_report.compare_frames(frames[(one, j)],
                                                                                         frames[(other, k)])
        result["summary"] = run_report.summarize(runs, 1 + opts.warm)
        Path(opts.out).write_text(json.dumps(result, indent=1, default=str))
    card.release()
    if not keep_work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: result.get(k) for k in ("summary", "frames", "skipped")}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
