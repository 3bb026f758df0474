"""Our VAE nodes' plan inputs, as ComfyUI validates a prompt before it queues it (the server answers
a refused prompt with HTTP 400): bad values are refused up front with a message that names the fix."""
from __future__ import annotations

import asyncio

import pytest

NODES = ("WanAccelVAEDecode", "WanAccelVAEEncode", "WanAccelVAEPatch")


@pytest.fixture(scope="module")
def validate(comfyui, tmp_path_factory):
    """``validate(node, **inputs)``: the errors ComfyUI's prompt validation reports for that node."""
    import execution
    import folder_paths
    from comfy_support import load_our_nodes

    load_our_nodes()
    vae_dir = tmp_path_factory.mktemp("models_vae")
    (vae_dir / "wan_accel_test_vae.safetensors").write_bytes(b"")  # only its name is validated
    folder_paths.add_model_folder_path("vae", str(vae_dir))

    def graph(node: str, inputs: dict) -> dict:
        prompt = {
            "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "wan_accel_test_vae.safetensors"}},
            "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "image": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        }
        if node == "WanAccelVAEDecode":
            prompt["ours"] = {"class_type": node, "inputs": {"samples": ["latent", 0], "vae": ["vae", 0], **inputs}}
            prompt["out"] = {"class_type": "PreviewImage", "inputs": {"images": ["ours", 0]}}
        elif node == "WanAccelVAEEncode":
            prompt["ours"] = {"class_type": node, "inputs": {"pixels": ["image", 0], "vae": ["vae", 0], **inputs}}
            prompt["out"] = {"class_type": "SaveLatent", "inputs": {"samples": ["ours", 0], "filename_prefix": "t"}}
        else:
            prompt["ours"] = {"class_type": node, "inputs": {"vae": ["vae", 0], **inputs}}
            prompt["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["latent", 0], "vae": ["ours", 0]}}
            prompt["out"] = {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}}
        return prompt

    def run(node: str, **inputs) -> list[str]:
        valid, _, _, node_errors = asyncio.run(execution.validate_prompt("test", graph(node, inputs), None))
        errors = node_errors.get("ours", {}).get("errors", [])
        assert valid == (not node_errors), node_errors  # nothing else in the graph may fail
        return [f"{e['message']}: {e['details']}" for e in errors]

    return run


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("inputs, needle", [
    ({"max_vram_gb": float("nan")}, "max_vram_gb is NaN: set a number of GiB"),  # min/max checks let NaN through
    ({"max_vram_gb": -3.0}, "max_vram_gb -3 is out of range"),
    ({"max_vram_gb": 1e6}, "max_vram_gb 1e+06 is out of range"),
    ({"tile_size": 16}, "tile_size 16 px is below the smallest tile the planner uses"),
    ({"tile_size": 63}, "at least 64"),
    ({"tile_size": -5}, "tile_size -5 is out of range"),
    ({"tile_size": 9000}, "tile_size 9000 is out of range"),
])
def test_bad_plan_inputs_are_refused_before_anything_runs(validate, node, inputs, needle):
    errors = validate(node, **inputs)
    assert len(errors) == 1 and needle in errors[0], errors
    assert "\n" not in errors[0]


@pytest.mark.parametrize("node", NODES)
def test_good_plan_inputs_pass_and_comfy_still_checks_the_rest(validate, node):
    assert validate(node) == []
    assert validate(node, max_vram_gb=2.5, tile_size=64, slice_frames=2) == []
    assert validate(node, max_vram_gb=0.0, tile_size=0, slice_frames=0) == []
    errors = validate(node, slice_frames=65)  # not ours to check: ComfyUI's own max applies
    assert len(errors) == 1 and "bigger than max" in errors[0], errors


class _Wan22:
    """Enough of a ComfyUI VAE around a small Wan 2.2 module to reach the run-time check."""

    def __init__(self):
        from wan_fixtures import wan22

        self.first_stage_model = wan22()

    def throw_exception_if_invalid(self):
        pass


def test_tile_below_the_vaes_own_minimum_is_refused_at_run_time(comfyui):
    """64 px passes validation (the Wan 2.1 VAE's minimum) but is 4 latent pixels for the Wan 2.2 VAE."""
    import torch
    from comfy_support import load_our_nodes

    mappings = load_our_nodes()
    vae = _Wan22()
    with pytest.raises(ValueError, match=r"tile_size 64 px is below the smallest tile the planner uses for this "
                                         r"VAE \(16x\), 128 px"):
        mappings["WanAccelVAEDecode"].execute(samples={"samples": torch.zeros(1, 48, 1, 4, 4)}, vae=vae, tile_size=64)


def test_tooltips_state_the_limits_the_checks_enforce(comfyui):
    from comfy_support import load_our_nodes

    from wan_accel.vae_accel import options

    schema = load_our_nodes()["WanAccelVAEDecode"].define_schema()
    tips = {i.id: i.tooltip for i in schema.inputs}
    assert f"At least {options.min_tile_pixels(8)} ({options.min_tile_pixels(16)} for the Wan 2.2 VAE)" in tips["tile_size"]
    assert "more time" in tips["tile_size"] and "more time" in tips["max_vram_gb"]
