"""bench/models.py: the streamed safetensors writer (fp8 experts) and the model cache."""
from __future__ import annotations

import pytest
import torch

from bench_support import load_bench


@pytest.fixture(scope="module")
def models():
    return load_bench("models")


def test_streamed_file_reads_back_exactly_with_safetensors(models, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    g = torch.Generator().manual_seed(0)
    tensors = {"blocks.0.q.weight": (torch.randn(6, 5, generator=g) / 4).to(torch.float8_e4m3fn),
               "head.bias": torch.randn(3, generator=g).to(torch.bfloat16),
               "norm.weight": torch.randn(7, generator=g)}
    entries = [(k, tuple(v.shape), v.dtype, lambda v=v: v) for k, v in tensors.items()]
    size = models.write_safetensors(tmp_path / "x.safetensors", entries, {"note": "random"})
    back = load_file(str(tmp_path / "x.safetensors"))
    assert size == (tmp_path / "x.safetensors").stat().st_size and back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k].view(torch.uint8), v.view(torch.uint8))
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        assert f.metadata() == {"note": "random"}
    assert not list(tmp_path.glob("*.partial"))


def test_writer_refuses_a_tensor_that_is_not_what_the_header_says(models, tmp_path):
    entries = [("a", (2, 2), torch.bfloat16, lambda: torch.zeros(2, 3, dtype=torch.bfloat16))]
    with pytest.raises(ValueError, match="declared"):
        models.write_safetensors(tmp_path / "bad.safetensors", entries)
    assert not (tmp_path / "bad.safetensors").exists()


def test_fp8_experts_load_in_comfyui_as_the_real_files_and_the_cache_is_reused(comfyui, models, tmp_path):
    import comfy.sd

    first = models.ensure(tmp_path, dim=128, layers=1, rank=2, fp8=True)
    again = models.ensure(tmp_path, dim=128, layers=1, rank=2, fp8=True)
    assert not first["reused"] and again["reused"] and again["files"] == first["files"]
    path = tmp_path / "diffusion_models" / "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"
    # as UNETLoader with weight_dtype fp8_e4m3fn (the shipped graphs) loads it
    patcher = comfy.sd.load_diffusion_model(str(path), model_options={"dtype": torch.float8_e4m3fn})
    net = patcher.model.diffusion_model
    assert type(patcher.model).__name__ == "WAN21" and net.patch_embedding.weight.shape[1] == 36
    assert net.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn
    other = models.ensure(tmp_path, dim=128, layers=2, rank=2, fp8=True)  # a different request rebuilds
    assert not other["reused"] and other["request"]["layers"] == 2
