"""A VAE the engine, our nodes or the patched VAE touched is freed once its owner drops it.

The engine caches op graphs per VAE module; a cache that kept the module alive leaked every VAE
(ComfyUI then prints "WARNING, memory leak with model WanVAE" on every prompt).
"""
from __future__ import annotations

import gc
import logging
import weakref

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="these tests need diffusers (pip install .[test])")


def _small_wan21() -> torch.nn.Module:
    # built here, not taken from wan_fixtures: those are cached for the session and never die
    return diffusers.AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                      temperal_downsample=[False, True, True]).eval()


def _collected(ref: weakref.ref) -> bool:
    gc.collect()
    return ref() is None


def test_engine_keeps_no_vae_alive():
    from wan_accel.vae_accel import decode, encode

    model = _small_wan21()
    ref = weakref.ref(model)
    decode(model, torch.randn(1, 16, 2, 4, 4), tile=2, slice_len=1, progress=False)
    encode(model, torch.rand(1, 3, 5, 32, 32) * 2 - 1, tile=2, slice_len=1, progress=False)
    del model
    assert _collected(ref), "the engine's graph cache kept the VAE module alive"


def test_a_graph_outliving_its_vae_says_so():
    from wan_accel.vae_accel.decode import decoder_graph

    model = _small_wan21()
    graph = decoder_graph(model)
    del model
    gc.collect()
    with pytest.raises(ReferenceError, match="no longer exists"):
        graph.stem.ops[0].module


# --- inside a real ComfyUI (COMFYUI_PATH) -------------------------------------------------------

def _run_everything(mappings, vae) -> None:
    """Every way our package touches a VAE: both engine nodes, and the patched VAE through core
    VAE Decode, VAE Encode and WanImageToVideo."""
    import nodes as comfy_nodes
    from comfy_extras.nodes_wan import WanImageToVideo

    z = {"samples": torch.randn(1, 16, 2, 5, 4)}
    frames = torch.rand(5, 40, 32, 3)
    mappings["WanAccelVAEDecode"].execute(samples=z, vae=vae)
    mappings["WanAccelVAEEncode"].execute(pixels=frames, vae=vae)
    patched = mappings["WanAccelVAEPatch"].execute(vae=vae).result[0]
    comfy_nodes.VAEDecode().decode(patched, z)
    comfy_nodes.VAEEncode().encode(patched, frames)
    cond = [[torch.zeros(1, 4, 8), {}]]
    WanImageToVideo.execute(positive=cond, negative=cond, vae=patched, width=32, height=40, length=5,
                            batch_size=1, start_image=frames[:1])


def test_comfy_vae_is_freed_without_comfy_leak_warning(comfyui, caplog):
    import comfy.model_management as mm
    from comfy_support import comfy_vae, load_our_nodes, random_wan_vae_sd

    mappings = load_our_nodes()
    vae = comfy_vae(random_wan_vae_sd("2.1"))
    module_ref, patcher_ref = weakref.ref(vae.first_stage_model), weakref.ref(vae.patcher)
    _run_everything(mappings, vae)
    del vae
    # ComfyUI's own check, as run before every model load: a patcher gone while its model lives on
    with caplog.at_level(logging.INFO):
        mm.cleanup_models_gc()
    leaks = [r.getMessage() for r in caplog.records if "memory leak" in r.getMessage()]
    assert not leaks, leaks
    assert _collected(patcher_ref) and _collected(module_ref), "the VAE outlived its owner"
