"""The attention backends: the registry (:mod:`.registry`) and one module per kernel family.

Importing this package registers every family, in the order the node lists them. A new backend is
one module that calls ``register(Backend(...))`` at import, plus one import line below (see
docs/attention.md, *Adding a backend*).
"""
from .registry import (ALL_FLOAT, AUTO, COMFY_DEFAULT, HALF, REGISTRY, Backend, available, get, load, names,
                       need_cuda, on_reset, probe_for, register, reset_probes, statuses)

# each import registers that family's backends; the order is the order of the node's list
from . import sdpa, sub_quad, sage, flash, xformers, kitchen, cudnn_fp8, triton_q8  # noqa: E402,F401  isort: skip

__all__ = ["ALL_FLOAT", "AUTO", "COMFY_DEFAULT", "HALF", "REGISTRY", "Backend", "available", "get", "load", "names",
           "need_cuda", "on_reset", "probe_for", "register", "reset_probes", "statuses"]
