"""Per-model attention backends for ComfyUI's ``optimized_attention_override`` hook.

Engine only: nothing here imports ComfyUI (the node lives in ``nodes/attention_nodes.py``).
"""
from .autotune import TUNER, AutoTuner
from .backends import AUTO, COMFY_DEFAULT, REGISTRY, Backend, available, get, names, reset_probes
from .contract import AttnCall
from .override import AttentionOverride
from .schedule import ATTENTION_KINDS, Schedule, parse_ranges

__all__ = ["AUTO", "COMFY_DEFAULT", "REGISTRY", "Backend", "available", "get", "names", "reset_probes",
           "AttnCall", "TUNER", "AttentionOverride", "AutoTuner", "ATTENTION_KINDS", "Schedule", "parse_ranges"]
