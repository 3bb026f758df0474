"""Telemetry's hooks into ComfyUI's executor and model management. The recorder itself is engine code.

Hooks, least fragile first (all supported versions have them):

* ``comfy_execution.progress``: the executor re-creates a ``ProgressRegistry`` per prompt and calls
  its ``start_progress`` / ``update_progress`` / ``finish_progress`` for every node, with or
  without a client id. We wrap ``ProgressRegistry.__init__`` (whoever creates the registry) and
  register a ``ProgressHandler`` on each new registry of a prompt we are recording.
* ``execution.PromptExecutor.execute_async``: a pass-through wrapper (``*args, **kwargs``) that opens
  the run before and closes it after, reading the outcome from ``status_messages``.

Both are required; if either is missing telemetry stays off and nothing is patched. Optional extras,
each a pass-through wrapper that times the call for the node running: ``comfy.model_management.
load_models_gpu`` (load seconds, partial and dynamic loads, exactly per node), ``free_memory``
(unloading), ``comfy.lora.calculate_weight`` (LoRA patching); and a logging handler that flags
ComfyUI's "Ran out of memory ... retrying" and "loaded partially" lines. Nothing here may fail a
prompt: every hook body is guarded and reports its failures to the recorder.
"""
from __future__ import annotations

import functools
import logging
import time
from typing import Callable

from ..telemetry.failures import error_type_name
from ..telemetry.probes import FailureReport
from ..telemetry.recorder import Recorder
from . import sdpa_priority

log = logging.getLogger("wan_accel.telemetry")
HANDLER_NAME = "wan_accel_telemetry"

PromptListener = Callable[[str, "str | None"], None]  # (prompt id, client id or None)


# ---------------------------------------------------------------------------- loaded models
def patcher_info(patcher) -> dict:
    """A ModelPatcher as the recorder sees it. ``dynamic``: ComfyUI's Dynamic VRAM (``is_dynamic()``, 0.33+)
    pages its weights in as it runs, so ``loaded_size()`` is near 0 right after the load, by design."""
    inner = getattr(patcher, "model", None)
    name = type(inner).__name__ if inner is not None else type(patcher).__name__
    is_dynamic = getattr(patcher, "is_dynamic", None)
    key = id(patcher)
    return {"name": name, "key": key, "id": f"{key & 0xFFFFFF:06x}", "size": int(patcher.model_size()),
            "loaded": int(patcher.loaded_size()), "dynamic": bool(is_dynamic()) if callable(is_dynamic) else False}


class LoadedModels:
    """Reads ComfyUI's ``current_loaded_models`` (imported on first use: plain Python has no ComfyUI)."""

    def __init__(self):
        self.mm = None

    def snapshot(self, report: FailureReport) -> dict:
        """{id(patcher): {name, size, loaded}} of ComfyUI's loaded models (a handful; a few us).

        A model whose sizes cannot be read is left out and reported."""
        if self.mm is None:
            import comfy.model_management as mm

            self.mm = mm
        models = self.mm.current_loaded_models
        if not models:
            return {}
        out = {}
        for lm in list(models):
            patcher = lm.model
            if patcher is None:
                continue
            try:
                out[id(patcher)] = patcher_info(patcher)
            except Exception as exc:
                report("reading a loaded model's size", exc)
        return out


LOADED_MODELS = LoadedModels()


def loaded_models_snapshot(report: FailureReport) -> dict:
    return LOADED_MODELS.snapshot(report)


# ---------------------------------------------------------------------------- progress handler
def _make_handler_class(progress):
    class TelemetryHandler(progress.ProgressHandler):
        def __init__(self, recorder: Recorder):
            super().__init__(HANDLER_NAME)
            self.recorder = recorder
            self.registry = None
            self._info: dict = {}

        def set_registry(self, registry):
            self.registry = registry

        def _node_info(self, node_id: str) -> dict:
            info = self._info.get(node_id)
            if info is None:
                info = {}
                try:
                    dyn = self.registry.dynprompt
                    node = dyn.get_node(node_id)
                    info["node_type"] = node.get("class_type")
                    display = dyn.get_display_node_id(node_id)
                    if display is not None:
                        info["display_id"] = str(display)
                    parent = dyn.get_parent_node_id(node_id)
                    if parent is not None:
                        info["parent_id"] = str(parent)
                except Exception as exc:  # the node is still recorded, by id
                    self.recorder.report_failure("reading the node's type and ids", exc)
                self._info[node_id] = info
            return info

        def start_handler(self, node_id, state, prompt_id):
            try:
                self.recorder.node_start(str(node_id), **self._node_info(node_id))
            except Exception as exc:  # the recorder guards itself; this is the last line
                self.recorder.report_failure("start hook", exc)

        def update_handler(self, node_id, value, max_value, state, prompt_id, image=None):
            try:
                self.recorder.node_progress(str(node_id), value, max_value)
            except Exception as exc:
                self.recorder.report_failure("progress hook", exc)

        def finish_handler(self, node_id, state, prompt_id):
            try:
                self.recorder.node_finish(str(node_id), **self._node_info(node_id))
            except Exception as exc:
                self.recorder.report_failure("finish hook", exc)

    return TelemetryHandler


# ---------------------------------------------------------------------------- executor outcome
def cached_nodes(executor, prompt) -> dict:
    out = {}
    for event, data in list(getattr(executor, "status_messages", []) or []):
        if event == "execution_cached":
            for nid in data.get("nodes", []):
                node = prompt.get(nid) if isinstance(prompt, dict) else None
                out[str(nid)] = node.get("class_type") if isinstance(node, dict) else None
    return out


def outcome(executor) -> tuple[str, dict | None]:
    status = "success" if getattr(executor, "success", True) else "error"
    error = None
    for event, data in reversed(list(getattr(executor, "status_messages", []) or [])):
        if event == "execution_error":
            status = "error"
            error = {"node_id": str(data.get("node_id")), "type": error_type_name(data.get("exception_type")),
                     "message": str(data.get("exception_message", ""))[:2000]}
            break
        if event == "execution_interrupted":
            status = "interrupted"
            error = {"node_id": str(data.get("node_id")), "type": "interrupted", "message": "interrupted"}
            break
        if event == "execution_success":
            break
    return status, error


# ---------------------------------------------------------------------------- install / uninstall
class ComfyHooks:
    """The patches installed into ComfyUI, and how to put each back."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.undo: list = []  # (owner, attribute, original) or (logger, None, handler)
        self.names: list[str] = []
        self.loading = 0  # load_models_gpu calls under way (free_memory and LoRA patching inside one count as load)
        self.in_lora = False
        self._facts: dict | None = None

    def run_facts(self) -> dict:
        """Facts about this ComfyUI and GPU for every run's header, read once (the advice uses them):
        ``sdpa_flash_first`` when ComfyUI runs SDPA with FlashAttention-2 first where cuDNN is faster."""
        if self._facts is None:
            reason = sdpa_priority.flash_first()
            self._facts = {"sdpa_flash_first": reason} if reason else {}
        return self._facts

    def uninstall(self) -> None:
        while self.undo:
            owner, attr, original = self.undo.pop()
            if attr is None:
                owner.removeHandler(original)
            else:
                setattr(owner, attr, original)
        self.names = []

    def install(self, recorder: Recorder, on_prompt: PromptListener | None = None) -> tuple[bool, str]:
        """Patch ComfyUI. Returns (enabled, reason). Touches nothing unless both required hooks exist."""
        hooks = self
        try:
            import comfy_execution.progress as progress
            import execution
        except Exception as exc:
            return False, f"ComfyUI execution modules not importable ({exc})"
        registry_cls = getattr(progress, "ProgressRegistry", None)
        handler_base = getattr(progress, "ProgressHandler", None)
        executor_cls = getattr(execution, "PromptExecutor", None)
        run_fn = getattr(executor_cls, "execute_async", None)
        missing = [name for name, obj in (("comfy_execution.progress.ProgressRegistry", registry_cls),
                                          ("comfy_execution.progress.ProgressHandler", handler_base),
                                          ("execution.PromptExecutor.execute_async", run_fn)) if obj is None]
        if missing or not hasattr(registry_cls, "register_handler"):
            return False, "hook missing: " + ", ".join(missing or ["ProgressRegistry.register_handler"])
        if getattr(registry_cls.__init__, "_wan_accel", False):
            return True, "already installed"

        handler_cls = _make_handler_class(progress)
        orig_init = registry_cls.__init__

        @functools.wraps(orig_init)
        def registry_init(self, *args, **kwargs):
            orig_init(self, *args, **kwargs)
            try:
                run = recorder.run
                prompt_id = getattr(self, "prompt_id", None)
                if run is not None and prompt_id and run.get("prompt_id") == str(prompt_id):
                    handler = handler_cls(recorder)
                    handler.set_registry(self)
                    self.register_handler(handler)
            except Exception as exc:
                recorder.report_failure("registering the progress handler", exc)

        registry_init._wan_accel = True

        @functools.wraps(run_fn)
        async def execute_async(self, prompt, prompt_id, *args, **kwargs):
            try:
                extra = kwargs.get("extra_data", args[0] if args else None)
                client_id = extra.get("client_id") if isinstance(extra, dict) else None
                if on_prompt is not None:
                    on_prompt(str(prompt_id), client_id)
                recorder.begin_run(str(prompt_id), source="comfyui", **hooks.run_facts())
            except Exception as exc:
                recorder.report_failure("begin_run", exc)
            try:
                return await run_fn(self, prompt, prompt_id, *args, **kwargs)
            finally:
                try:
                    status, error = outcome(self)
                    recorder.end_run(status=status, error=error, cached=cached_nodes(self, prompt))
                except Exception as exc:
                    recorder.report_failure("end_run", exc)

        execute_async._wan_accel = True
        registry_cls.__init__ = registry_init
        executor_cls.execute_async = execute_async
        self.undo.append((registry_cls, "__init__", orig_init))
        self.undo.append((executor_cls, "execute_async", run_fn))
        self.names = ["ProgressRegistry", "PromptExecutor.execute_async"] + self._install_optional(recorder)
        return True, "hooks: " + ", ".join(self.names)

    def _install_optional(self, recorder: Recorder) -> list[str]:
        done = []
        try:
            import comfy.model_management as mm
        except Exception as exc:
            log.info("wan_accel telemetry: model load, unload and LoRA timing off (%s)", exc)
            mm = None
        if mm is not None:
            done += self._wrap(mm, "load_models_gpu", self._timed_load(recorder))
            done += self._wrap(mm, "free_memory", self._timed_unload(recorder))
            try:
                import comfy.lora as lora
            except Exception as exc:
                log.info("wan_accel telemetry: LoRA patching time off (%s)", exc)
            else:
                done += self._wrap(lora, "calculate_weight", self._timed_lora(recorder))
        root = logging.getLogger()
        if not any(isinstance(h, LogWatch) for h in root.handlers):
            watch = LogWatch(recorder)
            root.addHandler(watch)
            self.undo.append((root, None, watch))
        done.append("log watch")
        return done

    def _wrap(self, owner, name: str, make) -> list[str]:
        """Replace ``owner.name`` with ``make(original)``; [] when it is missing or already ours."""
        orig = getattr(owner, name, None)
        if not callable(orig):
            log.info("wan_accel telemetry: %s.%s missing, not timed", getattr(owner, "__name__", owner), name)
            return []
        if getattr(orig, "_wan_accel", False):
            return [name]
        wrapper = functools.wraps(orig)(make(orig))
        wrapper._wan_accel = True
        setattr(owner, name, wrapper)
        self.undo.append((owner, name, orig))
        return [name]

    def _timed_load(self, recorder: Recorder):
        hooks = self

        def make(orig):
            def load_models_gpu(models, *args, **kwargs):
                if recorder.run is None:
                    return orig(models, *args, **kwargs)
                start = hooks.clock()
                hooks.loading += 1
                try:
                    return orig(models, *args, **kwargs)
                finally:
                    hooks.loading -= 1
                    try:
                        infos = []
                        for m in models:
                            try:
                                infos.append(patcher_info(m))
                            except Exception as exc:
                                recorder.report_failure("reading a loaded model's size", exc)
                        recorder.model_load(hooks.clock() - start, infos)
                    except Exception as exc:
                        recorder.report_failure("model load hook", exc)

            return load_models_gpu

        return make

    def _timed_unload(self, recorder: Recorder):
        hooks = self

        def make(orig):
            def free_memory(*args, **kwargs):
                if recorder.run is None:
                    return orig(*args, **kwargs)
                start = hooks.clock()
                try:
                    return orig(*args, **kwargs)
                finally:
                    recorder.model_unload(hooks.clock() - start, during_load=hooks.loading > 0)

            return free_memory

        return make

    def _timed_lora(self, recorder: Recorder):
        """Seconds in ``comfy.lora.calculate_weight``: once per patched weight at load, and on every use of
        a weight ComfyUI patches on the fly (partial loads, Dynamic VRAM). Host seconds always; GPU seconds
        too when the weight is on a CUDA device (two events on its current stream around the call). It
        calls itself for nested patches: only the outermost call is timed."""
        hooks = self

        def make(orig):
            def calculate_weight(*args, **kwargs):
                if recorder.run is None or hooks.in_lora:
                    return orig(*args, **kwargs)
                hooks.in_lora = True
                weight = args[1] if len(args) > 1 else kwargs.get("weight")
                device = getattr(weight, "device", None)
                on_gpu = getattr(device, "type", None) == "cuda"
                begin = recorder.gpu_stamp(device) if on_gpu else None
                start = hooks.clock()
                try:
                    return orig(*args, **kwargs)
                finally:
                    hooks.in_lora = False
                    seconds = hooks.clock() - start
                    events = (begin, recorder.gpu_stamp(device)) if begin is not None else None
                    recorder.lora_patch(seconds, during_load=hooks.loading > 0, gpu_events=events)

            return calculate_weight

        return make


class LogWatch(logging.Handler):
    """Flags ComfyUI's OOM-retry and partial-load log lines on the node that printed them."""

    def __init__(self, recorder: Recorder):
        super().__init__(logging.INFO)
        self.recorder = recorder

    def emit(self, record):
        if self.recorder.run is None:
            return
        try:
            msg = record.msg if isinstance(record.msg, str) else str(record.msg)
            if "Ran out of memory" in msg or "retrying with tiled" in msg:
                self.recorder.note("oom_retry", message=record.getMessage()[:300])
            elif "loaded partially" in msg:
                self.recorder.note("partial_load_log", message=record.getMessage()[:300])
        except Exception as exc:  # e.g. a log call whose arguments do not match its format string
            self.recorder.report_failure("reading a log line", exc)


HOOKS = ComfyHooks()


def install_hooks(recorder: Recorder, on_prompt: PromptListener | None = None) -> tuple[bool, str]:
    """Install the hooks once per process (benchmarks and :mod:`.telemetry_server` call this)."""
    return HOOKS.install(recorder, on_prompt)


def uninstall_hooks() -> None:
    """Put back what :func:`install_hooks` patched (benchmarks and tests; ComfyUI never calls it)."""
    HOOKS.uninstall()
