"""GPU only: how telemetry reads ComfyUI's Dynamic VRAM (0.33+, comfy-aimdo). Skipped without CUDA.

Run it alone (it starts ComfyUI on the GPU, which other test files in the same process put on the
CPU), with ComfyUI 0.33.0's tree and its requirements (comfy-aimdo)::

    COMFYUI_PATH=/path/to/ComfyUI-0.33.0 WAN_ACCEL_TELEMETRY_GPU_JSON=telemetry_dynamic_vram.json \\
        python -m pytest tests/test_telemetry_gpu.py -q -s

comfy-aimdo is started the way ComfyUI's main.py starts it; a model of ``comfy.ops`` Linear layers
(0.8 GB in bf16, one layer with a patch as a LoRA adds) is loaded through ``load_models_gpu`` by a
``ModelPatcherDynamic`` and run for four "steps" inside a recorded sampler node. The record must call
it a dynamic load, not a partial one, and show its residency growing as the steps page weights in;
the node's record is written to ``WAN_ACCEL_TELEMETRY_GPU_JSON``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

LAYERS, WIDTH, STEPS = 24, 4096, 4


def _comfy_with_dynamic_vram():
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        pytest.skip("GPU test: set COMFYUI_PATH to a ComfyUI 0.33+ checkout")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("GPU test: Dynamic VRAM needs CUDA")
    if path not in sys.path:
        sys.path.insert(0, path)
    from comfy.cli_args import args

    if args.cpu or "comfy.model_management" in sys.modules:
        pytest.skip("ComfyUI was already started in this process (on the CPU by other tests): run this file alone")
    if "class ModelPatcherDynamic" not in (Path(path) / "comfy" / "model_patcher.py").read_text(encoding="utf-8"):
        pytest.skip("this ComfyUI has no Dynamic VRAM (ModelPatcherDynamic)")
    import comfy_aimdo.control as aimdo

    try:  # before CUDA is initialised, as main.py does (signatures of comfy-aimdo 0.4.9 to 0.4.13)
        aimdo.init(simple_vram_headroom=None)
    except TypeError:
        aimdo.init()
    import comfy.memory_management
    import comfy.model_management as mm
    import comfy.model_patcher as mp

    devices = list(mm.get_all_torch_devices())
    headroom = int(getattr(args, "vram_headroom", 0) * 1024 ** 3)
    try:
        started = aimdo.init_devices((d.index, headroom) for d in devices)
    except TypeError:
        started = aimdo.init_devices(d.index for d in devices)
    assert started, "comfy-aimdo did not start on this GPU"
    mp.CoreModelPatcher = mp.ModelPatcherDynamic
    comfy.memory_management.aimdo_enabled = True
    return torch, mp, mm


def test_dynamic_vram_load_is_reported_as_dynamic_with_its_residency(tmp_path):
    torch, mp, mm = _comfy_with_dynamic_vram()
    import comfy.ops

    from wan_accel.nodes import telemetry_hooks as th
    from wan_accel.telemetry import recorder as recorder_module
    from wan_accel.telemetry.recorder import Recorder

    class Stack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(
                [comfy.ops.disable_weight_init.Linear(WIDTH, WIDTH, dtype=torch.bfloat16) for _ in range(LAYERS)])

        def get_dtype(self):
            return torch.bfloat16

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    g = torch.Generator().manual_seed(0)
    model = Stack()
    model.load_state_dict({f"layers.{i}.{p}": (torch.randn((WIDTH, WIDTH) if p == "weight" else (WIDTH,), generator=g)
                                               / WIDTH ** 0.5).to(torch.bfloat16)
                           for i in range(LAYERS) for p in ("weight", "bias")})
    patcher = mp.ModelPatcherDynamic(model, load_device=mm.get_torch_device(), offload_device=torch.device("cpu"))
    patcher.add_patches({"layers.0.weight": (torch.full((WIDTH, WIDTH), 1e-3, dtype=torch.bfloat16),)}, 1.0)
    assert patcher.is_dynamic()

    recorder_module.RESIDENT_SAMPLE_S = 0.0  # read residency at every step of this short run
    rec = Recorder(models=th.loaded_models_snapshot)
    hooks = th.ComfyHooks()
    ok, reason = hooks.install(rec)
    assert ok, reason
    try:
        rec.begin_run("gpu-dynamic-vram")
        rec.node_start("3", "KSampler")
        mm.load_models_gpu([patcher])
        loaded_after_load = patcher.loaded_size()
        x = torch.randn(64, WIDTH, device=mm.get_torch_device(), dtype=torch.bfloat16)
        with torch.no_grad():
            for step in range(STEPS):
                x = torch.nn.functional.normalize(patcher.model(x), dim=-1)
                torch.cuda.synchronize()
                rec.node_progress("3", step + 1, STEPS)
        rec.node_finish("3")
        run = rec.end_run()
    finally:
        hooks.uninstall()
        recorder_module.RESIDENT_SAMPLE_S = 0.5
        mm.unload_all_models()
    node = run["nodes"][0]
    report = {"loaded_size_right_after_load_mb": round(loaded_after_load / 2**20, 1),
              "model_size_mb": round(patcher.model_size() / 2**20, 1), "node": node, "totals": run["totals"]}
    out = os.environ.get("WAN_ACCEL_TELEMETRY_GPU_JSON")
    (tmp_path / "report.json").write_text(json.dumps(report, indent=1))
    if out:
        with open(out, "w") as fh:
            json.dump(report, fh, indent=1)
    print(json.dumps(report, indent=1))
    assert run["telemetry_failures"] == 0, run.get("telemetry_failure_sites")
    assert node["dynamic_load"] is True and node["partial_load"] is False and "offloaded_mb" not in node
    [res] = [m for m in node["models_resident"] if m["used"]]
    assert res["dynamic"] is True and res["peak_mb"] >= res["start_mb"]
    assert res["peak_mb"] > report["loaded_size_right_after_load_mb"]  # paged in by the steps, seen by the samples
    assert node["lora_patches"] >= 1 and node["lora_patch_steps_s"] > 0  # a dynamic model is patched as it runs
    # the patches' own GPU time, from CUDA events around them: positive, and no more than the node's GPU time
    assert 0 < node["lora_patch_steps_gpu_s"] <= node["lora_patch_gpu_s"] <= node["gpu_s"]
    assert not [a for a in node.get("advice", []) if a["kind"] == "partial_load"]
