"""What happened to models while one node ran: loads, unloads, LoRA patching, what stayed resident.

Mutable state kept by the recorder per node; :mod:`.model_records` renders it. A model is a
``ModelInfo`` dict from the host's loaded-model snapshot: ``name``, ``size`` and ``loaded`` bytes,
``dynamic`` (ComfyUI's Dynamic VRAM: weights are paged into VRAM while the model runs, so right
after its load almost nothing is resident, by design, not a partial load).
"""
from __future__ import annotations

ModelInfo = dict  # {"name": str, "size": int bytes, "loaded": int bytes, "dynamic": bool}


class ModelActivity:
    __slots__ = ("before", "after", "loads", "load_s", "load_end", "unload_s", "unload_outside_s",
                 "lora_s", "lora_load_s", "lora_calls", "lora_pending", "lora_gpu_s", "lora_load_gpu_s",
                 "lora_gpu_calls", "resident", "last_sample")

    def __init__(self):
        self.before: dict | None = None  # loaded-model snapshots: key -> ModelInfo
        self.after: dict | None = None
        self.loads: list = []  # {"seconds", "models": [ModelInfo]} per load_models_gpu call
        self.load_s = 0.0  # inside load_models_gpu (freeing VRAM for the load included)
        self.load_end = None  # clock when the last load finished: step 1 is timed from there
        self.unload_s = 0.0  # freeing VRAM (free_memory), inside a load or not
        self.unload_outside_s = 0.0  # the part of unload_s outside any load
        self.lora_s = 0.0  # host seconds computing LoRA-patched weights
        self.lora_load_s = 0.0  # the part of lora_s inside model loads (the rest: on the fly, during steps)
        self.lora_calls = 0
        # GPU seconds of the same patches (CUDA events around each): the host's seconds mislead on a GPU,
        # both ways: the kernels run after the call returns, or the call waits for a full launch queue
        self.lora_pending: list = []  # (event pair, during a load) the GPU has not passed yet
        self.lora_gpu_s = 0.0
        self.lora_load_gpu_s = 0.0
        self.lora_gpu_calls = 0
        self.resident: dict = {}  # key -> {"name", "id", "size", "dynamic", "first", "last", "peak"} bytes
        self.last_sample = None  # clock of the last residency sample

    def observe(self, snapshot: dict | None, complete: bool = True) -> None:
        """Note how much of each model is resident now (node start, loads, samples during steps, finish).

        ``complete``: the snapshot lists every loaded model, so one missing from it was unloaded."""
        for key, m in (snapshot or {}).items():
            loaded = m.get("loaded") or 0
            seen = self.resident.get(key)
            if seen is None:
                at_start = loaded if self.before is None or key in self.before else 0  # loaded during the node
                self.resident[key] = {"name": m.get("name"), "id": m.get("id"), "size": m.get("size") or 0,
                                      "dynamic": bool(m.get("dynamic")), "first": at_start, "last": loaded, "peak": loaded}
            else:
                seen["last"] = loaded
                seen["peak"] = max(seen["peak"], loaded)
                seen["dynamic"] = seen["dynamic"] or bool(m.get("dynamic"))
        if complete and snapshot is not None:
            for key, seen in self.resident.items():
                if key not in snapshot:
                    seen["last"] = 0  # unloaded since

    def has_dynamic(self) -> bool:
        return any(m["dynamic"] for m in self.resident.values())

    def loaded(self, seconds: float, models: list[ModelInfo], now: float) -> None:
        self.loads.append({"seconds": round(seconds, 4), "models": models})
        self.load_s += seconds
        self.load_end = now

    def unloaded(self, seconds: float, during_load: bool) -> None:
        self.unload_s += seconds
        if not during_load:
            self.unload_outside_s += seconds

    def lora(self, seconds: float, during_load: bool, gpu_events=None) -> None:
        self.lora_s += seconds
        self.lora_calls += 1
        if during_load:
            self.lora_load_s += seconds
        if gpu_events is not None:
            self.lora_pending.append((gpu_events, during_load))

    def lora_gpu(self, seconds: float, during_load: bool) -> None:
        self.lora_gpu_s += seconds
        self.lora_gpu_calls += 1
        if during_load:
            self.lora_load_gpu_s += seconds
