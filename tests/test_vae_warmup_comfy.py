"""The kernel warm-up as ComfyUI starts it when it loads the package (nodes/kernel_warmup.py), against a real
ComfyUI: on ComfyUI's VAE device and dtype, only where there is a CUDA device and Triton, off when asked."""
from __future__ import annotations

import sys

import pytest
import torch


@pytest.fixture
def warmup_node(comfyui, monkeypatch):
    """(kernel_warmup module as ComfyUI imported it, the starts it asked for), start_background recorded."""
    from comfy_support import load_our_nodes

    mappings = load_our_nodes()
    package = mappings["WanAccelVAEDecode"].__module__.rsplit(".", 2)[0]  # as ComfyUI imported it
    module = sys.modules[package + ".nodes.kernel_warmup"]
    starts = []
    monkeypatch.setattr(module.warmup, "start_background", lambda make, device, dtype: starts.append((make, device, dtype)))
    return module, starts


def test_nothing_starts_on_comfyuis_cpu(warmup_node):
    module, starts = warmup_node
    module.setup()
    assert starts == []  # the kernels are CUDA only: nothing to compile


def test_on_a_cuda_vae_device_it_starts_in_comfyuis_vae_dtype_unless_turned_off(warmup_node, monkeypatch):
    import comfy.model_management as mm

    module, starts = warmup_node
    asked = []
    monkeypatch.setattr(mm, "vae_device", lambda: torch.device("cuda", 0))
    monkeypatch.setattr(mm, "vae_dtype", lambda device=None, allowed_dtypes=(): asked.append(list(allowed_dtypes)) or torch.float16)
    monkeypatch.setattr(module, "triton_installed", lambda: True)
    module.setup()
    assert [(d, t) for _, d, t in starts] == [(torch.device("cuda", 0), torch.float16)]
    assert asked == [[torch.bfloat16, torch.float16, torch.float32]]  # the dtypes comfy.sd.VAE allows a Wan VAE

    monkeypatch.setattr(module, "triton_installed", lambda: False)
    module.setup()
    monkeypatch.setattr(module, "triton_installed", lambda: True)
    monkeypatch.setenv(module.ENV, "0")
    module.setup()
    assert len(starts) == 1


def test_the_modules_it_warms_up_are_comfyuis_wan_vaes_at_their_real_widths(warmup_node):
    """What the warm-up builds must be what the engine runs for a loaded checkpoint: ComfyUI's own classes,
    accepted by the engine, at the real widths (the compile keys hold the widths), in the asked dtype."""
    from wan_accel.vae_accel import build_decoder, build_encoder

    module, _ = warmup_node
    vaes = module.wan_vaes(torch.device("cpu"), torch.float32)
    name, vae = next(vaes)
    assert name == "wan2.1" and type(vae).__module__ == "comfy.ldm.wan.vae"
    assert vae.decoder.head[0].gamma.shape[0] == 96 and vae.encoder.conv1.weight.shape[0] == 96
    assert {p.dtype for p in vae.parameters()} == {torch.float32}
    assert all(torch.isfinite(p).all() for p in vae.parameters())
    assert build_decoder(vae).version == "2.1" and build_encoder(vae).latent_channels == 16
    vaes.close()
