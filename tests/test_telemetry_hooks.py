"""CPU tests of the ComfyUI hooks against a fake of the ComfyUI modules they touch.

The fake mirrors the API both supported versions share (comfy_execution.progress: ProgressRegistry
re-created per prompt, ProgressHandler; execution.PromptExecutor.execute_async; status_messages;
comfy.model_management.current_loaded_models / load_models_gpu). The real thing is exercised by
test_telemetry_integration.py.

Over 400 lines: every hook's case beside the one fake of ComfyUI they share.
"""
from __future__ import annotations

import asyncio
import sys
import types

import pytest

from wan_accel.nodes import telemetry_hooks as th
from wan_accel.nodes import telemetry_server as ts
from wan_accel.telemetry.probes import MB, NullProbe
from wan_accel.telemetry.recorder import Recorder

GB = 1024 * MB


def _fake_progress():
    m = types.ModuleType("comfy_execution.progress")

    class ProgressHandler:
        def __init__(self, name):
            self.name = name
            self.enabled = True

        def set_registry(self, registry):
            pass

        def start_handler(self, node_id, state, prompt_id):
            pass

        def update_handler(self, node_id, value, max_value, state, prompt_id, image=None):
            pass

        def finish_handler(self, node_id, state, prompt_id):
            pass

        def reset(self):
            pass

    class ProgressRegistry:
        def __init__(self, prompt_id, dynprompt):
            self.prompt_id = prompt_id
            self.dynprompt = dynprompt
            self.nodes = {}
            self.handlers = {}

        def register_handler(self, handler):
            self.handlers[handler.name] = handler

        def start_progress(self, node_id):
            for h in self.handlers.values():
                h.start_handler(node_id, {}, self.prompt_id)

        def update_progress(self, node_id, value, max_value, image=None):
            for h in self.handlers.values():
                h.update_handler(node_id, value, max_value, {}, self.prompt_id, image)

        def finish_progress(self, node_id):
            for h in self.handlers.values():
                h.finish_handler(node_id, {}, self.prompt_id)

    m.ProgressHandler, m.ProgressRegistry = ProgressHandler, ProgressRegistry
    m.registry = None

    def reset_progress_state(prompt_id, dynprompt):
        m.registry = ProgressRegistry(prompt_id, dynprompt)

    m.reset_progress_state = reset_progress_state
    return m


class DynPrompt:
    def __init__(self, prompt):
        self.prompt = prompt

    def get_node(self, node_id):
        return self.prompt[node_id]

    def get_display_node_id(self, node_id):
        return node_id

    def get_parent_node_id(self, node_id):
        return node_id.rsplit(":", 1)[0] if ":" in node_id else None


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t

    def tick(self, dt):
        self.t += dt


class Patcher:
    """ComfyUI's ModelPatcher as telemetry reads it (0.3.64 / 0.8.0: no is_dynamic)."""

    def __init__(self, name, size, lora_weights=0, exclusive=False):
        self.model = type(name, (), {})()
        self.size = size
        self.loaded = 0
        self.lora_weights = lora_weights  # weights a LoRA patches
        self.exclusive = exclusive  # loading it unloads every other model (a Wan 2.2 expert on a small card)

    def model_size(self):
        return self.size

    def loaded_size(self):
        return self.loaded


class DynamicPatcher(Patcher):
    """ComfyUI 0.33's ModelPatcherDynamic: weights are paged into VRAM as the model runs."""

    def is_dynamic(self):
        return True


def _fake_comfy(progress, clock):
    mm = types.ModuleType("comfy.model_management")
    mm.current_loaded_models = []
    lora = types.ModuleType("comfy.lora")

    def calculate_weight(patches, weight, key, intermediate_dtype=None, original_weights=None):
        clock.tick(0.01)
        if patches:  # nested patches: ComfyUI's calculate_weight calls itself through the module global
            lora.calculate_weight([], weight, key)
        return weight

    def free_memory(memory_required, device, keep_loaded=[]):
        for lm in list(mm.current_loaded_models):
            if lm.model not in keep_loaded:
                clock.tick(1.5)
                lm.model.loaded = 0
                mm.current_loaded_models.remove(lm)

    def load_models_gpu(models, memory_required=0, **kwargs):
        for p in models:
            if p.exclusive:
                mm.free_memory(p.size, "cuda", keep_loaded=[p])  # through the module, as ComfyUI's global lookup does
            clock.tick(2.0)
            if isinstance(p, DynamicPatcher):
                p.loaded = 64 * MB  # only the small force-loaded weights: the rest comes in during the steps
            else:
                p.loaded = p.size - 2300 * MB if p.size > 10 * GB else p.size  # the big one does not fit
                for i in range(p.lora_weights):  # LoRA merged into the resident weights at load
                    lora.calculate_weight([("lora", i)], None, f"w{i}")
            if not any(lm.model is p for lm in mm.current_loaded_models):
                mm.current_loaded_models.append(types.SimpleNamespace(model=p))

    def sampler_step(p):
        clock.tick(3.0)
        if isinstance(p, DynamicPatcher):
            p.loaded = min(p.size, p.loaded + p.size // 4)
        if isinstance(p, DynamicPatcher) or p.loaded < p.size:  # patched on the fly as the weights are used
            for i in range(p.lora_weights):
                lora.calculate_weight([("lora", i)], None, f"w{i}")

    mm.load_models_gpu, mm.free_memory, mm.sampler_step = load_models_gpu, free_memory, sampler_step
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.lora = mm, lora
    lora.calculate_weight = calculate_weight
    execution = types.ModuleType("execution")

    class PromptExecutor:
        def __init__(self, server):
            self.server = server
            self.status_messages = []
            self.success = True
            self.cached = set()

        async def execute_async(self, prompt, prompt_id, extra_data={}, execute_outputs=[]):
            self.server.client_id = extra_data.get("client_id")
            self.status_messages = [("execution_start", {"prompt_id": prompt_id}),
                                    ("execution_cached", {"nodes": sorted(self.cached), "prompt_id": prompt_id})]
            progress.reset_progress_state(prompt_id, DynPrompt(prompt))
            reg = progress.registry
            for node_id, node in prompt.items():
                if node_id in self.cached:
                    reg.finish_progress(node_id)
                    continue
                reg.start_progress(node_id)
                kind = node["class_type"]
                if kind == "Fail":
                    self.success = False
                    self.status_messages.append(("execution_error", {"node_id": node_id,
                                                                     "exception_type": node.get("exception_type", "RuntimeError"),
                                                                     "exception_message": "node broke"}))
                    return
                if "patcher" in node:  # a sampler
                    mm.load_models_gpu([node["patcher"]])
                    steps = node.get("steps", 2)
                    for step in range(1, steps + 1):
                        mm.sampler_step(node["patcher"])
                        reg.update_progress(node_id, step, steps)
                    if node.get("paged_out_after"):  # Dynamic VRAM evicted pages for the next model
                        node["patcher"].loaded = node["paged_out_after"]
                reg.finish_progress(node_id)
            self.status_messages.append(("execution_success", {"prompt_id": prompt_id}))

    execution.PromptExecutor = PromptExecutor
    return comfy, mm, lora, execution


class FakeServer:
    instance = None

    def __init__(self):
        self.client_id = None
        self.sent = []

    def send_sync(self, event, data, sid=None):
        self.sent.append((event, data, sid))


@pytest.fixture
def fake_comfy(monkeypatch):
    progress = _fake_progress()
    clock = Clock()
    comfy, mm, lora, execution = _fake_comfy(progress, clock)
    pkg = types.ModuleType("comfy_execution")
    pkg.progress = progress
    server_mod = types.ModuleType("server")
    server = FakeServer()
    server_mod.PromptServer = types.SimpleNamespace(instance=server)
    for name, mod in {"comfy_execution": pkg, "comfy_execution.progress": progress, "comfy": comfy,
                      "comfy.model_management": mm, "comfy.lora": lora, "execution": execution,
                      "server": server_mod}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(th.LOADED_MODELS, "mm", None)
    yield types.SimpleNamespace(progress=progress, mm=mm, lora=lora, execution=execution, server=server, clock=clock)
    th.uninstall_hooks()


def _recorder():
    events = ts.LiveEvents()
    rec = Recorder(probe=NullProbe(rss=lambda: 10 * MB), models=th.loaded_models_snapshot, on_event=events.send)
    rec.live_events = events
    return rec


def _install(rec):
    return th.install_hooks(rec, on_prompt=rec.live_events.prompt_started)


def test_hooks_record_every_node_and_restore(fake_comfy):
    orig_init = fake_comfy.progress.ProgressRegistry.__init__
    orig_run = fake_comfy.execution.PromptExecutor.execute_async
    rec = _recorder()
    ok, reason = _install(rec)
    assert ok, reason
    assert "load_models_gpu" in reason
    wan = Patcher("WAN21", 16 * GB)
    prompt = {"1": {"class_type": "EmptyLatentImage"}, "3": {"class_type": "KSampler", "patcher": wan},
              "65:70:63": {"class_type": "VAEDecode"}, "9": {"class_type": "SaveImage"}}
    ex = fake_comfy.execution.PromptExecutor(fake_comfy.server)
    ex.cached = {"9"}
    asyncio.run(ex.execute_async(prompt, "pid-1", {"client_id": "c1"}, ["9"]))
    run = rec.last_run
    nodes = {r["node_id"]: r for r in run["nodes"]}
    assert run["status"] == "success" and run["prompt_id"] == "pid-1"
    assert set(nodes) == set(prompt)
    assert nodes["9"]["cached"] is True
    assert nodes["3"]["type"] == "KSampler" and nodes["3"]["steps"]["count"] == 2
    assert nodes["3"]["partial_load"] is True and nodes["3"]["offloaded_mb"] == 2300.0
    assert nodes["3"]["models_loaded"][0]["name"] == "WAN21"
    assert nodes["65:70:63"]["parent_node_id"] == "65:70"
    # live events went to the submitting client
    events = [(e, sid) for e, _, sid in fake_comfy.server.sent]
    assert ("wan_accel.telemetry.run_start", "c1") in events and ("wan_accel.telemetry.run", "c1") in events
    assert sum(1 for e, _ in events if e == "wan_accel.telemetry.node") == 4

    th.uninstall_hooks()
    assert fake_comfy.progress.ProgressRegistry.__init__ is orig_init
    assert fake_comfy.execution.PromptExecutor.execute_async is orig_run


def test_api_run_without_client_id_only_announces_the_saved_run(fake_comfy):
    rec = _recorder()
    assert _install(rec)[0]
    ex = fake_comfy.execution.PromptExecutor(fake_comfy.server)
    asyncio.run(ex.execute_async({"1": {"class_type": "EmptyImage"}}, "pid-2", {}, ["1"]))
    assert rec.last_run["nodes"][0]["status"] == "ok"  # recorded with no client id
    assert [(e, sid) for e, _, sid in fake_comfy.server.sent] == [("wan_accel.telemetry.saved", None)]


def test_failing_node_recorded_as_error(fake_comfy):
    rec = _recorder()
    assert _install(rec)[0]
    ex = fake_comfy.execution.PromptExecutor(fake_comfy.server)
    prompt = {"1": {"class_type": "EmptyImage"}, "2": {"class_type": "Fail"}, "3": {"class_type": "SaveImage"}}
    asyncio.run(ex.execute_async(prompt, "pid-3", {}, ["3"]))
    run = rec.last_run
    nodes = {r["node_id"]: r for r in run["nodes"]}
    assert run["status"] == "error" and run["error"]["message"] == "node broke"
    assert nodes["2"]["status"] == "error" and nodes["2"]["error"]["type"] == "RuntimeError"
    assert "3" not in nodes


@pytest.mark.parametrize("full_name, shown", [
    ("RuntimeError", "RuntimeError"),
    ("torch.OutOfMemoryError", "OutOfMemoryError"),
    ("custom_nodes.comfyui-wan-accel.vae_accel.schedule.TileError", "TileError"),
    ("/home/me/ComfyUI/custom_nodes/comfyui-wan-accel.vae_accel.schedule.TileError", "TileError"),
])
def test_error_types_are_shown_by_class_name(fake_comfy, full_name, shown):
    rec = _recorder()
    assert _install(rec)[0]
    ex = fake_comfy.execution.PromptExecutor(fake_comfy.server)
    asyncio.run(ex.execute_async({"2": {"class_type": "Fail", "exception_type": full_name}}, "pid-3b", {}, ["2"]))
    run = rec.last_run
    assert run["error"]["type"] == shown and run["nodes"][0]["error"]["type"] == shown


def test_hook_failures_are_counted_in_the_run(fake_comfy, caplog):
    import logging

    class BrokenPatcher(Patcher):
        def loaded_size(self):
            raise RuntimeError("weakref died")

    rec = _recorder()
    assert _install(rec)[0]
    good, broken = Patcher("WAN21", GB), BrokenPatcher("CLIP", GB)
    fake_comfy.mm.current_loaded_models[:] = [types.SimpleNamespace(model=broken), types.SimpleNamespace(model=good)]
    ex = fake_comfy.execution.PromptExecutor(fake_comfy.server)

    class NoNodeInfo(DynPrompt):
        def get_display_node_id(self, node_id):
            raise KeyError(node_id)

    orig_reset = fake_comfy.progress.reset_progress_state
    fake_comfy.progress.reset_progress_state = lambda pid, dyn: orig_reset(pid, NoNodeInfo(dyn.prompt))
    prompt = {"1": {"class_type": "EmptyImage"}, "3": {"class_type": "KSampler", "patcher": good}}
    with caplog.at_level("INFO"):
        asyncio.run(ex.execute_async(prompt, "pid-7", {}, ["3"]))
    run = rec.last_run
    assert {r["node_id"] for r in run["nodes"]} == {"1", "3"} and run["status"] == "success"
    assert run["telemetry_failure_sites"]["reading the node's type and ids"] == 2
    assert run["telemetry_failure_sites"]["reading a loaded model's size"] >= 2
    lines = [r.getMessage() for r in caplog.records if "inside telemetry" in r.getMessage()]
    assert len(lines) == 1 and "KeyError" in lines[0]


def test_log_watch_counts_a_line_it_cannot_read(fake_comfy):
    import logging

    rec = _recorder()
    watch = th.LogWatch(rec)
    rec.begin_run("pid-8")
    rec.node_start("8", "VAEDecode")
    # a custom node's log call whose arguments do not fit its format string
    watch.emit(logging.LogRecord("somebody", logging.WARNING, __file__, 1, "Ran out of memory in %s %s", ("x",), None))
    rec.node_finish("8")
    run = rec.end_run()
    assert run["telemetry_failure_sites"] == {"reading a log line": 1}


def test_telemetry_failures_never_fail_the_prompt(fake_comfy, monkeypatch):
    rec = _recorder()
    assert _install(rec)[0]

    def boom(*a, **k):
        raise RuntimeError("telemetry bug")

    for name in ("begin_run", "node_start", "node_progress", "node_finish", "end_run", "model_load"):
        monkeypatch.setattr(rec, name, boom)
    ex = fake_comfy.execution.PromptExecutor(fake_comfy.server)
    prompt = {"1": {"class_type": "EmptyImage"}, "3": {"class_type": "KSampler", "patcher": Patcher("SD", GB)}}
    asyncio.run(ex.execute_async(prompt, "pid-4", {}, ["3"]))
    assert ex.success and ex.status_messages[-1][0] == "execution_success"


def test_broken_executor_still_closes_the_run(fake_comfy):
    rec = _recorder()
    assert _install(rec)[0]
    ex = fake_comfy.execution.PromptExecutor(fake_comfy.server)
    with pytest.raises(KeyError):
        asyncio.run(ex.execute_async({"1": {}}, "pid-5", {}, ["1"]))  # no class_type: the fake raises
    assert rec.run is None and rec.last_run["prompt_id"] == "pid-5"


def test_missing_hook_turns_telemetry_off_and_patches_nothing(fake_comfy, monkeypatch):
    monkeypatch.delattr(fake_comfy.progress, "ProgressRegistry")
    orig_run = fake_comfy.execution.PromptExecutor.execute_async
    ok, reason = _install(_recorder())
    assert not ok and "ProgressRegistry" in reason
    assert fake_comfy.execution.PromptExecutor.execute_async is orig_run


def test_setup_logs_one_line_when_hooks_are_missing(fake_comfy, monkeypatch, caplog, tmp_path):
    monkeypatch.delattr(fake_comfy.execution, "PromptExecutor")
    folder_paths = types.ModuleType("folder_paths")
    folder_paths.get_output_directory = lambda: str(tmp_path)
    monkeypatch.setitem(sys.modules, "folder_paths", folder_paths)
    monkeypatch.setattr(ts, "install_routes", lambda service: None)  # aiohttp is not a CI dependency
    monkeypatch.setattr(ts, "SERVICE", None)
    with caplog.at_level("INFO", logger="wan_accel.telemetry"):
        ts.setup()
    lines = [r for r in caplog.records if r.name == "wan_accel.telemetry"]
    assert len(lines) == 1 and "telemetry off" in lines[0].getMessage()
    assert ts.SERVICE.enabled is False and ts.SERVICE.status()["enabled"] is False


def test_log_watch_flags_oom_retries(fake_comfy):
    import logging

    rec = _recorder()
    assert _install(rec)[0]
    rec.begin_run("pid-6")
    rec.node_start("8", "VAEDecode")
    logging.getLogger().warning("Warning: Ran out of memory when regular VAE decoding, retrying with tiled VAE decoding.")
    rec.node_finish("8")
    node = rec.end_run()["nodes"][0]
    assert node["oom_retries"] == 1


# ---------------------------------------------------------------------------- time lost outside our engines
def _clocked(fake):
    """A recorder and hooks on the fake's clock: the fake ComfyUI advances it as its work "takes time"."""
    events = ts.LiveEvents()
    rec = Recorder(probe=NullProbe(rss=lambda: 10 * MB), models=th.loaded_models_snapshot, on_event=events.send,
                   clock=fake.clock)
    hooks = th.ComfyHooks(clock=fake.clock)
    ok, reason = hooks.install(rec, on_prompt=events.prompt_started)
    assert ok, reason
    return rec, hooks, reason


def _short_id(patcher):
    return f"{id(patcher) & 0xFFFFFF:06x}"


def test_expert_swap_lora_patching_and_partial_loads_are_timed_with_their_fixes(fake_comfy):
    rec, hooks, reason = _clocked(fake_comfy)
    high = Patcher("WAN22", 16 * GB, lora_weights=40, exclusive=True)
    low = Patcher("WAN22", 16 * GB, lora_weights=40, exclusive=True)
    prompt = {"57": {"class_type": "KSamplerAdvanced", "patcher": high},
              "58": {"class_type": "KSamplerAdvanced", "patcher": low}}
    try:
        assert "free_memory" in reason and "calculate_weight" in reason
        ex = fake_comfy.execution.PromptExecutor(fake_comfy.server)
        asyncio.run(ex.execute_async(prompt, "pid-swap", {}, ["58"]))
        run = rec.last_run
    finally:
        hooks.uninstall()
    assert fake_comfy.mm.free_memory.__name__ == "free_memory" and not hasattr(fake_comfy.lora.calculate_weight, "_wan_accel")
    assert run["telemetry_failures"] == 0, run.get("telemetry_failure_sites")
    first, second = (next(r for r in run["nodes"] if r["node_id"] == n) for n in ("57", "58"))
    hi, lo = f"WAN22@{_short_id(high)}", f"WAN22@{_short_id(low)}"  # two experts of one class, told apart
    per_weight = 0.02  # the fake's LoRA patch, nested call included
    assert first["model_load_s"] == pytest.approx(2.0 + 40 * per_weight)
    assert first["lora_patches"] == 40 + 2 * 40 and first["lora_patch_steps_s"] == pytest.approx(2 * 40 * per_weight)
    assert first["lora_patch_s"] == pytest.approx(3 * 40 * per_weight)
    assert first["partial_load"] is True and first["partial_models"][0]["name"] == hi
    assert "model_swap" not in first
    assert second["model_unload_s"] == pytest.approx(1.5)  # the high-noise expert made room
    assert second["model_load_s"] == second["model_moves_s"] == pytest.approx(1.5 + 2.0 + 40 * per_weight)
    assert second["model_swap"] is True
    assert [m["name"] for m in second["models_unloaded"]] == [hi] and [m["name"] for m in second["models_loaded"]] == [lo]
    kinds = {r["node_id"]: [a["kind"] for a in r.get("advice", [])] for r in run["nodes"]}
    assert kinds == {"57": ["partial_load", "model_load", "lora_steps", "lora_load"],
                     "58": ["partial_load", "model_swap", "lora_steps", "lora_load"]}
    texts = {a["kind"]: a["text"] for a in second["advice"]}
    assert texts["partial_load"].startswith(f"partial load: 2.2 GB of {lo} stayed in RAM")
    assert "smaller quantisation" in texts["partial_load"]
    assert texts["model_swap"].startswith(f"model swap: 4.3 s moving models ({hi} out, {lo} in)")
    assert texts["lora_steps"].startswith("LoRA on the fly: 1.6 s") and "partially loaded" in texts["lora_steps"]
    t = run["totals"]
    assert t["model_swaps"] == 1 and t["partial_loads"] == 2 and t["offloaded_mb"] == 4600.0
    assert t["model_moves_s"] == pytest.approx(2.8 + 4.3) and t["model_unload_s"] == pytest.approx(1.5)
    assert t["lora_patch_s"] == pytest.approx(6 * 40 * per_weight)
    assert [(a["node_id"], a["kind"]) for a in run["advice"]][:2] == [("57", "partial_load"), ("57", "model_load")]


def test_small_costs_get_no_advice(fake_comfy):
    rec, hooks, _ = _clocked(fake_comfy)
    try:
        ex = fake_comfy.execution.PromptExecutor(fake_comfy.server)
        prompt = {"3": {"class_type": "KSampler", "patcher": Patcher("SD15", GB, lora_weights=3), "steps": 20}}
        asyncio.run(ex.execute_async(prompt, "pid-small", {}, ["3"]))
    finally:
        hooks.uninstall()
    node = rec.last_run["nodes"][0]
    # a 2 s load in a 62 s run is worth a line; 3 LoRA weights patched at load (60 ms) are not
    assert [a["kind"] for a in node["advice"]] == ["model_load"]
    assert node["lora_patch_s"] == pytest.approx(0.06) and node["lora_patch_steps_s"] == 0


def test_dynamic_vram_load_is_not_a_partial_load_and_residency_is_sampled(fake_comfy):
    rec, hooks, _ = _clocked(fake_comfy)
    wan = DynamicPatcher("WAN22", 16 * GB, lora_weights=40)
    prompt = {"3": {"class_type": "KSampler", "patcher": wan, "steps": 4, "paged_out_after": GB}}
    try:
        ex = fake_comfy.execution.PromptExecutor(fake_comfy.server)
        asyncio.run(ex.execute_async(prompt, "pid-dyn", {}, ["3"]))
    finally:
        hooks.uninstall()
    run = rec.last_run
    node = run["nodes"][0]
    # loaded_size() is 64 MB right after a dynamic load: by design, not "16 GB offloaded"
    assert node["partial_load"] is False and "offloaded_mb" not in node and node["dynamic_load"] is True
    assert node["models_loaded"][0]["dynamic"] is True and "offloaded_mb" not in node["models_loaded"][0]
    [res] = node["models_resident"]
    assert res["dynamic"] is True and res["used"] is True and res["size_mb"] == 16384.0
    assert res["start_mb"] == 0.0 and res["end_mb"] == 1024.0
    assert res["peak_mb"] == 16384.0  # read during the steps, not only at the node's ends
    assert [a["kind"] for a in node["advice"]] == ["model_load", "lora_steps"]
    assert "--disable-dynamic-vram" in node["advice"][1]["text"]
    assert run["totals"]["dynamic_loads"] == 1 and run["totals"]["partial_loads"] == 0


def test_dynamic_model_that_never_fits_is_reported_as_streamed(fake_comfy):
    rec, hooks, _ = _clocked(fake_comfy)
    wan = DynamicPatcher("WAN22", 16 * GB)
    prompt = {"3": {"class_type": "KSampler", "patcher": wan, "steps": 2}}  # 2 steps page in half of it
    try:
        ex = fake_comfy.execution.PromptExecutor(fake_comfy.server)
        asyncio.run(ex.execute_async(prompt, "pid-dyn2", {}, ["3"]))
    finally:
        hooks.uninstall()
    node = rec.last_run["nodes"][0]
    streamed = [a for a in node["advice"] if a["kind"] == "dynamic_streamed"]
    assert len(streamed) == 1 and streamed[0]["text"].startswith("Dynamic VRAM: at most 8.1 GB of WAN22's 16.0 GB")


def test_lora_patches_on_the_gpu_are_judged_by_gpu_time(fake_comfy):
    """On a GPU the host's seconds in calculate_weight are no measure of the patch (here each call waits 50 ms
    for a full launch queue while its kernels take 2 ms): the record carries the GPU seconds from CUDA events
    on the weight's stream, and the advice judges by them."""
    from test_telemetry_recorder import FakeCuda

    from wan_accel.telemetry.probes import CudaProbe

    cuda = FakeCuda()
    cost = {"host": 0.0, "gpu": 0.0}

    def calculate_weight(patches, weight, key, intermediate_dtype=None, original_weights=None):
        fake_comfy.clock.tick(cost["host"])
        cuda.gpu_clock += cost["gpu"]
        return weight

    fake_comfy.lora.calculate_weight = calculate_weight
    events = ts.LiveEvents()
    rec = Recorder(probe=CudaProbe(cuda, 0, rss=lambda: 10 * MB), models=th.loaded_models_snapshot,
                   on_event=events.send, clock=fake_comfy.clock)
    hooks = th.ComfyHooks(clock=fake_comfy.clock)
    assert hooks.install(rec, on_prompt=events.prompt_started)[0]
    lora = fake_comfy.lora
    on_gpu = types.SimpleNamespace(device=types.SimpleNamespace(type="cuda", index=0))

    def patched_on_the_fly(n, host_s, gpu_s, weight):
        cost.update(host=host_s, gpu=gpu_s)
        for i in range(n):
            lora.calculate_weight([], weight, f"w{i}")

    try:
        rec.begin_run("pid-gpu-lora")
        rec.node_start("17", "KSamplerAdvanced")
        patched_on_the_fly(400, 0.06, 0.002, on_gpu)  # 400 patches: 20 s of host time, 0.8 s on the GPU
        rec.node_finish("17")
        rec.node_start("18", "KSamplerAdvanced")
        patched_on_the_fly(400, 0.06, 0.2, on_gpu)  # the same host time, 80 s on the GPU: worth a line
        patched_on_the_fly(5, 0.06, 0.2, None)  # a weight on the CPU: host time only, no events
        rec.node_finish("18")
        rec.end_run()
        run = rec.last_run
    finally:
        hooks.uninstall()
    cheap, costly = (next(r for r in run["nodes"] if r["node_id"] == n) for n in ("17", "18"))
    assert cheap["lora_patch_steps_s"] == pytest.approx(400 * 0.06)
    assert cheap["lora_patch_gpu_s"] == cheap["lora_patch_steps_gpu_s"] == pytest.approx(400 * 0.002)
    assert costly["lora_patches"] == 405 and costly["lora_patch_gpu_s"] == pytest.approx(400 * 0.2)
    assert [a["kind"] for a in cheap.get("advice", [])] == []  # 20 s of host time, but 0.8 s of GPU time
    [steps] = [a for a in costly["advice"] if a["kind"] == "lora_steps"]
    assert steps["seconds"] == pytest.approx(80.0) and steps["text"].startswith("LoRA on the fly: 80.0 s of GPU time")
    assert run["totals"]["lora_patch_gpu_s"] == pytest.approx(80.8)
    assert run["telemetry_failures"] == 0


def test_run_header_carries_the_sdpa_priority_and_samplers_get_its_advice(fake_comfy, monkeypatch):
    """The hooks read once whether ComfyUI runs SDPA with FlashAttention-2 first where cuDNN is faster; the
    run's header says so and each sampler that ran PyTorch's pick gets the fix."""
    calls = []
    monkeypatch.setattr(th.sdpa_priority, "flash_first", lambda: calls.append(1) or "NVIDIA H200 (sm90, cuDNN 91700)")
    rec, hooks, _ = _clocked(fake_comfy)
    try:
        ex = fake_comfy.execution.PromptExecutor(fake_comfy.server)
        prompt = {"3": {"class_type": "KSampler", "patcher": Patcher("WAN21", GB), "steps": 4}}
        for pid in ("pid-a", "pid-b"):
            asyncio.run(ex.execute_async(prompt, pid, {}, ["3"]))
        run = rec.last_run
    finally:
        hooks.uninstall()
    assert run["sdpa_flash_first"] == "NVIDIA H200 (sm90, cuDNN 91700)" and len(calls) == 1  # read once
    [node] = run["nodes"]
    assert "attention_kernel" in [a["kind"] for a in node["advice"]]
    assert any(a["kind"] == "attention_kernel" for a in run["advice"])
