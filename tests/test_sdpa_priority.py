"""ComfyUI 0.33 runs PyTorch's SDPA with FlashAttention-2 first; where PyTorch would pick cuDNN (Hopper,
Blackwell datacenter) that is the slower kernel. The detector says so only there, and the samplers get advice
naming the fix unless one of our pinned kernels ran."""
from __future__ import annotations

import types

import pytest

from wan_accel.nodes import sdpa_priority
from wan_accel.telemetry.advice import node_advice

FLASH, CUDNN = types.SimpleNamespace(name="FLASH_ATTENTION"), types.SimpleNamespace(name="CUDNN_ATTENTION")


def fake_torch(capability=(9, 0), cudnn=91700, cuda=True, name="NVIDIA H200"):
    cuda_ns = types.SimpleNamespace(is_available=lambda: cuda, get_device_capability=lambda: capability,
                                    get_device_name=lambda: name)
    cudnn_ns = types.SimpleNamespace(is_available=lambda: cudnn is not None, version=lambda: cudnn)
    return types.SimpleNamespace(cuda=cuda_ns, backends=types.SimpleNamespace(cudnn=cudnn_ns))


def attention_pytorch():
    pass


def attention_sage():
    pass


SDPA = types.SimpleNamespace(optimized_attention=attention_pytorch)


def ops(*priority):
    return types.SimpleNamespace(SDPA_BACKEND_PRIORITY=list(priority)) if priority else types.SimpleNamespace()


@pytest.mark.parametrize("capability", [(9, 0), (10, 0), (10, 3)])
def test_flash_first_on_gpus_where_pytorch_prefers_cudnn(capability, monkeypatch):
    monkeypatch.delenv("TORCH_CUDNN_SDPA_DEPRIORITIZED", raising=False)
    reason = sdpa_priority.flash_first(ops(FLASH, CUDNN), fake_torch(capability), SDPA)
    assert reason == f"NVIDIA H200 (sm{capability[0]}{capability[1]}, cuDNN 91700)"


@pytest.mark.parametrize("case", ["consumer_ada", "consumer_blackwell", "old_cudnn", "cudnn_first", "no_priority",
                                  "no_cuda", "deprioritized", "broken", "sage_attention"])
def test_no_flash_first_note_elsewhere(case, monkeypatch):
    monkeypatch.delenv("TORCH_CUDNN_SDPA_DEPRIORITIZED", raising=False)
    o, t, a = ops(FLASH, CUDNN), fake_torch(), SDPA
    if case == "consumer_ada":
        t = fake_torch((8, 9))  # RTX 4090: PyTorch prefers FlashAttention there too
    elif case == "consumer_blackwell":
        t = fake_torch((12, 0))  # RTX 5090
    elif case == "old_cudnn":
        t = fake_torch(cudnn=91400)
    elif case == "cudnn_first":
        o = ops(CUDNN, FLASH)  # ComfyUI 0.8.0 on Windows
    elif case == "no_priority":
        o = ops()  # ComfyUI 0.8.0 on Linux, 0.3.64
    elif case == "no_cuda":
        t = fake_torch(cuda=False)
    elif case == "deprioritized":
        monkeypatch.setenv("TORCH_CUDNN_SDPA_DEPRIORITIZED", "1")
    elif case == "broken":
        t = types.SimpleNamespace()  # a probe error is no advice, never an exception
    elif case == "sage_attention":
        a = types.SimpleNamespace(optimized_attention=attention_sage)  # --use-sage-attention: not SDPA at all
    assert sdpa_priority.flash_first(o, t, a) is None


def sampler(**extra):
    return {"node_id": "17", "type": "KSamplerAdvanced", "status": "ok", "cached": False, "seconds": 40.0, **extra}


def test_samplers_get_the_advice_unless_a_pinned_kernel_ran():
    note = "NVIDIA H200 (sm90, cuDNN 91700)"
    [advice] = node_advice(sampler(), 90.0, note)
    assert advice["kind"] == "attention_kernel" and note in advice["text"] and "auto or sdpa_cudnn" in advice["text"]
    plain = sampler(attention=[{"backend": "sdpa", "fallback": False}])  # PyTorch's pick: skewed the same way
    assert [a["kind"] for a in node_advice(plain, 90.0, note)] == ["attention_kernel"]
    for backend in ("sdpa_cudnn", "triton_q8", "sage"):
        assert node_advice(sampler(attention=[{"backend": backend}, {"backend": "sdpa"}]), 90.0, note) == []
    assert node_advice(sampler(), 90.0, None) == []  # another GPU or ComfyUI: nothing to say
    assert node_advice(sampler(cached=True), 90.0, note) == []
    assert node_advice({**sampler(), "type": "VAEDecode"}, 90.0, note) == []
