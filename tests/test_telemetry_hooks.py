"""CPU tests of the ComfyUI hooks against a fake of the ComfyUI modules they touch.

The fake mirrors the API both supported versions share (comfy_execution.progress: ProgressRegistry
re-created per prompt, ProgressHandler; execution.PromptExecutor.execute_async; status_messages;
comfy.model_management.current_loaded_models / load_models_gpu). The real thing is exercised by
test_telemetry_integration.py.
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


class Patcher:
    def __init__(self, name, size):
        self.model = type(name, (), {})()
        self.size = size
        self.loaded = 0

    def model_size(self):
        return self.size

    def loaded_size(self):
        return self.loaded


def _fake_comfy(progress):
    mm = types.ModuleType("comfy.model_management")
    mm.current_loaded_models = []

    def load_models_gpu(models, memory_required=0, **kwargs):
        for p in models:
            p.loaded = p.size - 2300 * MB if p.size > 10 * GB else p.size  # the big one does not fit
            if not any(lm.model is p for lm in mm.current_loaded_models):
                mm.current_loaded_models.append(types.SimpleNamespace(model=p))

    mm.load_models_gpu = load_models_gpu
    comfy = types.ModuleType("comfy")
    comfy.model_management = mm
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
                if kind == "KSampler":
                    mm.load_models_gpu([node["patcher"]])
                    for step in (1, 2):
                        reg.update_progress(node_id, step, 2)
                reg.finish_progress(node_id)
            self.status_messages.append(("execution_success", {"prompt_id": prompt_id}))

    execution.PromptExecutor = PromptExecutor
    return comfy, mm, execution


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
    comfy, mm, execution = _fake_comfy(progress)
    pkg = types.ModuleType("comfy_execution")
    pkg.progress = progress
    server_mod = types.ModuleType("server")
    server = FakeServer()
    server_mod.PromptServer = types.SimpleNamespace(instance=server)
    for name, mod in {"comfy_execution": pkg, "comfy_execution.progress": progress, "comfy": comfy,
                      "comfy.model_management": mm, "execution": execution, "server": server_mod}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(th.LOADED_MODELS, "mm", None)
    yield types.SimpleNamespace(progress=progress, mm=mm, execution=execution, server=server)
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
