"""Integration tests of WanAccelAttention inside a real ComfyUI (0.3.64 or 0.8.0), on the CPU.

Set COMFYUI_PATH to a ComfyUI checkout; without it these tests skip. A small random-weight Wan
model (real key names, 2 blocks, dim 256 = 2 heads of 128) is loaded through
comfy.sd.load_diffusion_model_state_dict and sampled with comfy.sample.sample, so the override is
reached the way it is in a workflow: model_options -> transformer_options -> wrap_attn.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from wan_accel.attention import TUNER, AttentionOverride, reset_probes

STEPS = 2
BLOCKS = 2
CALLS_PER_STEP = BLOCKS * 2  # one self- and one cross-attention per block; cond+uncond share one batch


@pytest.fixture(scope="module")
def comfy(comfyui):
    import comfy.model_management  # noqa: F401  (reads args.cpu, set by the fixture)
    import comfy.ops
    import comfy.sample
    import comfy.sd
    import comfy.ldm.wan.model as wan

    return {"sd": comfy.sd, "sample": comfy.sample, "ops": comfy.ops, "wan": wan}


@pytest.fixture(scope="module")
def nodes(comfyui):
    return importlib.import_module("wan_accel.nodes.attention_nodes")


@pytest.fixture(autouse=True)
def _fresh():
    reset_probes()
    TUNER.clear()


def wan_state_dict(comfy, seed: int) -> dict:
    m = comfy["wan"].WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=256, ffn_dim=512,
                              freq_dim=256, text_dim=4096, out_dim=16, num_heads=2, num_layers=BLOCKS,
                              operations=comfy["ops"].disable_weight_init, device="cpu", dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    return {"model.diffusion_model." + k: torch.randn(p.shape, generator=g) * (0.5 / p.shape[-1] ** 0.5 if p.ndim >= 2 else 0.1)
            for k, p in m.state_dict().items()}


@pytest.fixture(scope="module")
def wan_models(comfy):
    """Two independently loaded models, like Wan 2.2's high- and low-noise experts."""
    out = []
    for seed in (0, 1):
        patcher = comfy["sd"].load_diffusion_model_state_dict(wan_state_dict(comfy, seed))
        assert type(patcher.model.diffusion_model).__name__ == "WanModel"
        assert patcher.model.diffusion_model.num_heads == 2
        out.append(patcher)
    return out


def sample(comfy, model, seed=1):
    latent = torch.zeros(1, 16, 2, 8, 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    ctx = torch.randn(1, 512, 4096, generator=torch.Generator().manual_seed(2)) * 0.1
    return comfy["sample"].sample(model, noise, STEPS, 3.0, "euler", "simple", [[ctx, {}]], [[ctx * 0.5, {}]],
                                  latent, denoise=1.0, seed=seed, disable_pbar=True)


def override_of(model):
    return model.model_options.get("transformer_options", {}).get("optimized_attention_override")


def test_schema_node_id_and_tooltips(nodes):
    schema = nodes.WanAccelAttention.define_schema()
    assert schema.node_id == "WanAccelAttention"
    assert nodes.WanAccelAttention in nodes.NODES
    ids = [i.id for i in schema.inputs]
    assert ids[:3] == ["model", "backend", "fallback"] and {"verify", "attention", "steps", "blocks"} <= set(ids)
    assert all(i.tooltip for i in schema.inputs), [i.id for i in schema.inputs if not i.tooltip]
    backend = next(i for i in schema.inputs if i.id == "backend")
    assert {"sdpa", "sdpa_cudnn", "sdpa_flash", "sdpa_efficient", "sdpa_math", "sub_quad", "sage", "sage3",
            "flash_attn", "flash_attn_4", "xformers", "kitchen_int8", "cudnn_fp8", "triton_q8",
            "auto", "comfy_default"} <= set(backend.options)
    assert "triton_q8 [" in backend.tooltip  # with its state on this machine
    assert nodes.WanAccelAttention.validate_inputs(steps="0-3", blocks="") is True
    assert isinstance(nodes.WanAccelAttention.validate_inputs(steps="x", blocks=""), str)


def run_node(nodes, model, backend, fallback="sdpa", **kw):
    args = dict(verify=True, min_cosine=0.999, max_rel_error=0.05, attention="all", steps="", blocks="")
    args.update(kw)
    out = nodes.WanAccelAttention.execute(model=model, backend=backend, fallback=fallback, **args)
    return out.result[0] if hasattr(out, "result") else out[0]


def test_sdpa_through_the_node_equals_no_node(comfy, nodes, wan_models):
    base = wan_models[0]
    want = sample(comfy, base)
    patched = run_node(nodes, base, "sdpa")
    assert patched is not base and override_of(base) is None  # the input model is untouched
    ov = override_of(patched)
    got = sample(comfy, patched)
    assert ov.counts == {"sdpa": STEPS * CALLS_PER_STEP}
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # sanity: the comparison can fail (a different seed gives a different result)
    assert not torch.allclose(sample(comfy, base, seed=5), want, atol=1e-2)


def test_two_models_two_backends_in_one_process(comfy, nodes, wan_models):
    high = run_node(nodes, wan_models[0], "sub_quad")
    low = run_node(nodes, wan_models[1], "sdpa_math")
    ref_high, ref_low = sample(comfy, wan_models[0]), sample(comfy, wan_models[1])
    out_high, out_low = sample(comfy, high), sample(comfy, low)
    assert override_of(high).counts == {"sub_quad": STEPS * CALLS_PER_STEP}
    assert override_of(low).counts == {"sdpa_math": STEPS * CALLS_PER_STEP}
    torch.testing.assert_close(out_high, ref_high, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out_low, ref_low, atol=1e-4, rtol=1e-4)
    # toggling without a restart: the same model with another backend now
    again = run_node(nodes, wan_models[0], "sdpa")
    sample(comfy, again)
    assert override_of(again).counts == {"sdpa": STEPS * CALLS_PER_STEP}
    assert override_of(high).counts == {"sub_quad": STEPS * CALLS_PER_STEP}  # the earlier clone is unchanged


def test_schedule_by_step_block_and_kind_inside_sampling(comfy, nodes, wan_models):
    by_step = run_node(nodes, wan_models[0], "sub_quad", "sdpa", steps="1")
    sample(comfy, by_step)
    assert override_of(by_step).counts == {"sdpa": CALLS_PER_STEP, "sub_quad": CALLS_PER_STEP}
    by_block = run_node(nodes, wan_models[0], "sub_quad", "sdpa", blocks="1")
    sample(comfy, by_block)
    assert override_of(by_block).counts == {"sdpa": STEPS * 2, "sub_quad": STEPS * 2}
    self_only = run_node(nodes, wan_models[0], "sub_quad", "sdpa", attention="self")
    sample(comfy, self_only)
    assert override_of(self_only).counts == {"sub_quad": STEPS * BLOCKS, "sdpa": STEPS * BLOCKS}


def test_existing_override_is_chained(comfy, nodes, wan_models):
    seen = []

    def previous(func, *args, **kwargs):
        seen.append(kwargs["transformer_options"].get("block_index"))
        return func(*args, **kwargs)

    base = wan_models[0].clone()
    base.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = previous
    patched = run_node(nodes, base, "sub_quad", "comfy_default", blocks="0")
    ov = override_of(patched)
    assert isinstance(ov, AttentionOverride) and ov.previous is previous
    assert override_of(base) is previous
    sample(comfy, patched)
    # block 1's self and cross attention went through the old override (0.3.64 sets no block_index)
    assert seen in ([1, 1] * STEPS, [None, None] * STEPS)
    assert ov.counts == {"sub_quad": STEPS * 2, "comfy_default": STEPS * 2}


def test_auto_inside_comfyui_picks_a_cpu_backend_and_matches(comfy, nodes, wan_models):
    want = sample(comfy, wan_models[0])
    patched = run_node(nodes, wan_models[0], "auto")
    got = sample(comfy, patched)
    ov = override_of(patched)
    assert set(ov.counts) <= {"sdpa", "sdpa_math", "sdpa_flash", "sub_quad"} and sum(ov.counts.values()) == STEPS * CALLS_PER_STEP
    assert len(TUNER.choices) == 2  # self- and cross-attention shapes, tuned once each
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_extension_lists_the_node(comfyui):
    ext = importlib.import_module("wan_accel.nodes.extension")
    names = [n.define_schema().node_id for n in importlib.import_module("wan_accel.nodes.attention_nodes").NODES]
    assert names == ["WanAccelAttention"]
    assert ext.NODE_MODULES[1].__name__.endswith("attention_nodes")


def test_backend_list_says_what_this_machine_can_run(nodes):
    from wan_accel.attention.backends import statuses

    schema = nodes.WanAccelAttention.define_schema()
    backend, fallback = (next(i for i in schema.inputs if i.id == n) for n in ("backend", "fallback"))
    states = statuses()
    assert "sub_quad [ready]" in backend.tooltip and "sage [not installed (pip install sageattention)]" in backend.tooltip
    for name, state in states.items():
        assert f"{name} [{state}]" in backend.tooltip and f"{name} [{state}]" in fallback.tooltip
    assert backend.options == list(states) + ["auto", "comfy_default"]  # values unchanged: saved graphs load


def test_startup_log_names_the_usable_backends(nodes, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="wan_accel.attention"):
        nodes.setup()  # nodes/extension.py runs each feature's setup() once per load
    (line,) = [r.getMessage() for r in caplog.records if "usable here" in r.getMessage()]
    usable = line.split("usable here: ")[1].split(";")[0].split(", ")
    assert {"sdpa", "sub_quad"} <= set(usable) and "sage" not in usable
    assert "sage not installed (pip install sageattention)" in line


def graph_node(name: str, returns: tuple = (), value=None, takes: dict | None = None) -> type:
    """A test-only V1 node: hands out ``value`` as ``returns`` (a loader or encoder, without files), or,
    given ``takes``, an output node that takes those inputs (so the prompt has an output)."""
    def run(self, **inputs):
        return (value,) if returns else {}

    return type(name, (), {"RETURN_TYPES": returns, "FUNCTION": "run", "CATEGORY": "wan_accel_test", "run": run,
                           "OUTPUT_NODE": takes is not None,
                           "INPUT_TYPES": classmethod(lambda cls: {"required": takes or {}})})


def test_the_graph_learns_which_kernel_ran_on_every_sampler_run(comfy, nodes, wan_models, monkeypatch):
    """ComfyUI's own executor: each sampler run reports, per shape, what ran, marked as a fallback and tied
    to the attention node's id (V3 hidden unique_id), also when the attention node itself is cached."""
    import execution
    import nodes as comfy_nodes

    from wan_accel.telemetry import phases

    ctx = torch.randn(1, 512, 4096, generator=torch.Generator().manual_seed(2)) * 0.1
    for cls in (graph_node("WanAccelTestModel", ("MODEL",), wan_models[0]),
                graph_node("WanAccelTestCond", ("CONDITIONING",), [[ctx, {}]]),
                graph_node("WanAccelTestLatent", ("LATENT",), {"samples": torch.zeros(1, 16, 2, 8, 8)}),
                graph_node("WanAccelTestSink", takes={"samples": ("LATENT",)}), nodes.WanAccelAttention):
        monkeypatch.setitem(comfy_nodes.NODE_CLASS_MAPPINGS, cls.__name__, cls)
    prompt = {
        "1": {"class_type": "WanAccelTestModel", "inputs": {}},
        "2": {"class_type": "WanAccelAttention", "inputs": {
            "model": ["1", 0], "backend": "sage", "fallback": "sdpa", "verify": True, "min_cosine": 0.999,
            "max_rel_error": 0.05, "attention": "all", "steps": "", "blocks": ""}},
        "3": {"class_type": "WanAccelTestCond", "inputs": {}},
        "4": {"class_type": "WanAccelTestLatent", "inputs": {}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "seed": 1, "steps": STEPS, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["3", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "WanAccelTestSink", "inputs": {"samples": ["5", 0]}},
    }
    patched = []
    real_patch = nodes.patch_model
    monkeypatch.setattr(nodes, "patch_model", lambda *a, **kw: patched.append(1) or real_patch(*a, **kw))
    executor = prompt_executor(execution)
    events: list = []
    phases.add_listener(events.append)
    try:
        runs = []
        for seed in (1, 2):  # the second run re-samples; the attention node's output is cached
            prompt["5"]["inputs"]["seed"] = seed
            events.clear()
            executor.execute(prompt, f"run{seed}", {}, ["6"])
            assert executor.success, executor.status_messages[-3:]
            runs.append([e for e in events if e.get("name") == "attention_backend"])
    finally:
        phases.remove_listener(events.append)
    assert len(patched) == 1, "the second run must reuse the cached attention node"
    for notes in runs:
        assert {n["shape"].split(" D")[0] for n in notes} == {"B2 H2 Lq32 Lk32", "B2 H2 Lq32 Lk512"}, notes
        assert all((n["backend"], n["requested"], n["fallback"], n["node_id"]) == ("sdpa", "sage", True, "2")
                   for n in notes), notes
        assert all("sage unavailable" in n["reason"] for n in notes)


def prompt_executor(execution):
    """ComfyUI's PromptExecutor without a server (the constructor's cache arguments differ by version)."""
    import inspect
    import types

    quiet = types.SimpleNamespace(client_id=None, last_node_id=None, last_prompt_id=None, sockets_metadata={},
                                  send_sync=lambda *args, **kwargs: None, queue_updated=lambda: None)
    if "cache_args" not in inspect.signature(execution.PromptExecutor.__init__).parameters:
        return execution.PromptExecutor(quiet, cache_type=False)
    return execution.PromptExecutor(quiet, cache_type=False, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})


def test_wan_i2v_image_cross_attention_never_reaches_a_quantising_kernel(comfy, monkeypatch):
    """A real Wan i2v forward: where ComfyUI marks the image cross-attention low_precision_attention=False
    (0.33+; SageAttention can give NaNs there), a quantising backend gets only the other calls."""
    from wan_accel.attention.backends import registry
    from wan_accel.telemetry import phases

    given = []

    def quantising(call):  # exact, so the model's output can be compared; says it quantises
        given.append(call.k_len)
        return torch.nn.functional.scaled_dot_product_attention(call.q, call.k, call.v)

    monkeypatch.setitem(registry.REGISTRY, "lowp", registry.Backend("lowp", "test", quantising, low_precision=True))
    model = comfy["wan"].WanModel(model_type="i2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=256,
                                  ffn_dim=512, freq_dim=256, text_dim=4096, out_dim=16, num_heads=2,
                                  num_layers=BLOCKS, operations=comfy["ops"].disable_weight_init, device="cpu",
                                  dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / p.shape[-1] ** 0.5 if p.ndim >= 2 else 0.1))
    x = torch.randn(1, 16, 2, 8, 8, generator=g)
    t = torch.tensor([500.0])
    ctx = torch.randn(1, 512, 4096, generator=g) * 0.1
    clip = torch.randn(1, 257, 1280, generator=g)

    ov = AttentionOverride("lowp", fallback="sub_quad", verify=False, label="i2v")
    flags = []

    def spy(func, *args, **kwargs):  # what ComfyUI hands the override
        flags.append((args[1].shape[-2], kwargs.get("low_precision_attention")))
        return ov(func, *args, **kwargs)

    events: list = []
    phases.add_listener(events.append)
    try:
        with torch.no_grad():
            want = model(x, t, ctx, clip_fea=clip, transformer_options={})
            got = model(x, t, ctx, clip_fea=clip, transformer_options={"optimized_attention_override": spy})
    finally:
        phases.remove_listener(events.append)
    if (257, False) not in flags:
        pytest.skip("this ComfyUI's Wan does not mark the image cross-attention low_precision_attention=False")
    assert set(given) == {32, 512} and 257 not in given  # self (32 tokens) and text (512): the kernel; image: not
    assert ov.counts == {"lowp": 2 * BLOCKS, "sub_quad": BLOCKS}
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    (image,) = [e for e in events if e.get("name") == "attention_backend" and "Lk257" in e["shape"]]
    assert image["backend"] == "sub_quad" and image["fallback"] is True
    assert "low_precision_attention=False" in image["reason"]
