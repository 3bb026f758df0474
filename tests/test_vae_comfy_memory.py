"""The VAE's device memory on ComfyUI's terms (COMFYUI_PATH): its budget counts what ComfyUI's patcher can
reclaim and never exceeds what core's own VAE would reserve, and loading it evicts no model for a plan
that does not need the room. Dynamic VRAM needs CUDA; its patcher is stood in for where noted."""
from __future__ import annotations

import copy
import types

import pytest
import torch

from comfy_support import load_our_nodes

GIB = 2**30


@pytest.fixture(scope="module")
def bridge(comfyui):
    import sys

    mappings = load_our_nodes()
    return sys.modules[mappings["WanAccelVAEPatch"].__module__.rsplit(".", 1)[0] + ".vae_bridge"]


def _on_cuda(vae):
    """The VAE as if its device were a GPU: the budget reads only the device's type (nothing runs)."""
    fake = copy.copy(vae)
    fake.device = torch.device("cuda")
    return fake


BIG_LATENT = (1, 16, 21, 104, 152)  # 81 frames at 1216x832: core would reserve 26 GiB in float32


def test_budget_counts_what_the_patcher_can_reclaim(bridge, vae21, monkeypatch):
    """With Dynamic VRAM the diffusion model's weights stay in VRAM after sampling but the patcher can
    stream them out: ComfyUI's global free memory says 2 GiB, the patcher 40."""
    vae = _on_cuda(vae21)
    monkeypatch.setattr(bridge.mm, "get_free_memory", lambda *args, **kwargs: 2 * GIB)
    monkeypatch.setattr(vae21.patcher, "get_free_memory", lambda device: 40 * GIB, raising=False)
    assert bridge.budget(vae, "decode", BIG_LATENT) == 8 * GIB  # the cap, not the 2 GiB floor-less share
    assert bridge.budget(vae, "encode", (1, 3, 81, 1216, 832)) == 8 * GIB


def test_budget_without_a_patcher_measure_uses_comfys_free_memory(bridge, vae21, monkeypatch):
    """ComfyUI 0.3.64 and 0.8.0 patchers have no get_free_memory: ComfyUI's free memory it is."""
    vae = _on_cuda(vae21)
    vae.patcher = types.SimpleNamespace()
    monkeypatch.setattr(bridge.mm, "get_free_memory", lambda *args, **kwargs: 2 * GIB)
    assert bridge.budget(vae, "decode", BIG_LATENT) == 2 * GIB  # never more than is free


def test_budget_never_exceeds_what_core_would_reserve(bridge, vae21, monkeypatch):
    vae = _on_cuda(vae21)
    monkeypatch.setattr(bridge.mm, "get_free_memory", lambda *args, **kwargs: 70 * GIB)
    monkeypatch.setattr(vae21.patcher, "get_free_memory", lambda device: 70 * GIB, raising=False)
    for kind, shape in (("decode", (1, 16, 2, 16, 16)), ("encode", (1, 3, 5, 128, 128))):
        stock = getattr(vae, f"memory_used_{kind}")(shape, vae.vae_dtype)
        assert 0 < stock < 2 * GIB  # below every floor
        assert bridge.budget(vae, kind, shape) == int(stock)


def test_budget_is_unlimited_off_cuda(bridge, vae21):
    assert bridge.budget(vae21, "decode", BIG_LATENT) is None


def test_a_users_budget_is_a_cap_at_what_is_free(bridge, vae21, monkeypatch):
    vae = _on_cuda(vae21)
    monkeypatch.setattr(bridge.mm, "get_free_memory", lambda *args, **kwargs: 4 * GIB)
    monkeypatch.setattr(vae21.patcher, "get_free_memory", lambda device: 4 * GIB, raising=False)
    assert bridge.budget(vae, "decode", BIG_LATENT, max_vram_gb=12.0) == 4 * GIB
    assert bridge.budget(vae, "decode", BIG_LATENT, max_vram_gb=1.5) == int(1.5 * GIB)
    assert bridge.budget(vae21, "decode", BIG_LATENT, max_vram_gb=1.5) == int(1.5 * GIB)  # CPU: as given


@pytest.mark.parametrize("max_vram_gb", [0.0, 12.0])
def test_loading_the_vae_evicts_nothing_for_the_plan(bridge, vae21, monkeypatch, max_vram_gb):
    """Core reserves its whole estimate (memory_used_decode), which unloads the diffusion model the next
    run needs; our plans never use more than is free, so the VAE is loaded asking for no room."""
    import nodes as comfy_nodes

    calls, real = [], bridge.mm.load_models_gpu
    monkeypatch.setattr(bridge.mm, "load_models_gpu",
                        lambda models, memory_required=0, **kw: calls.append(memory_required) or real(models, memory_required, **kw))
    patched = load_our_nodes()["WanAccelVAEPatch"].execute(vae=vae21, max_vram_gb=max_vram_gb).result[0]
    comfy_nodes.VAEDecode().decode(patched, {"samples": torch.randn(1, 16, 2, 4, 4)})
    comfy_nodes.VAEEncode().encode(patched, torch.rand(5, 32, 32, 3))
    assert calls == [0, 0]


Z = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(20))


def _patched(vae):
    return load_our_nodes()["WanAccelVAEPatch"].execute(vae=vae).result[0]


def test_weights_come_through_comfys_cast_one_use_at_a_time(vae21, monkeypatch):
    """No private weight copy: every conv's weights are ComfyUI's cast (which streams and accounts for
    them), asked for each use and handed back after it; on the CPU, fully loaded, that is the module's
    own tensor."""
    import comfy.ops

    casts, uncasts, real_cast = [], [], comfy.ops.cast_bias_weight

    def cast(module, *args, **kwargs):
        out = real_cast(module, *args, **kwargs)
        casts.append((module, out[0]))
        return out

    monkeypatch.setattr(comfy.ops, "cast_bias_weight", cast)
    if hasattr(comfy.ops, "uncast_bias_weight"):
        real_uncast = comfy.ops.uncast_bias_weight
        monkeypatch.setattr(comfy.ops, "uncast_bias_weight",
                            lambda module, *args: uncasts.append(module) or real_uncast(module, *args))
    _patched(vae21).decode(Z)
    decoder = vae21.first_stage_model.decoder
    used = [m for m, _ in casts]
    assert {m for m in decoder.modules() if hasattr(m, "weight_function")} <= set(used)
    assert sum(m is decoder.head[-1] for m in used) == 2  # two slices: asked again for each use, not kept
    assert all(w.data_ptr() == m.weight.data_ptr() for m, w in casts)
    if hasattr(comfy.ops, "uncast_bias_weight"):
        assert len(uncasts) == len(casts)


def test_the_patchers_weight_patches_reach_the_engine(vae21, monkeypatch):
    """A weight patch (as a LoRA or weight wrapper installs through the patcher) changes core's decode;
    the engine, taking its weights through ComfyUI's cast, decodes the same."""
    head = vae21.first_stage_model.decoder.head[-1]
    plain = vae21.decode(Z)
    monkeypatch.setattr(head, "weight_function", [lambda w: w * 0.5], raising=False)
    core, ours = vae21.decode(Z), _patched(vae21).decode(Z)
    assert (core - plain).abs().max() > 0.05
    assert (ours - core).abs().max().item() <= 1e-5
