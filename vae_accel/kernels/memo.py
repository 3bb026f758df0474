"""Tensors derived from weights (phase kernels), computed once per execution context.

The engine's :class:`~..ops.ExecContext` caches plain weights per run; derived ones need a
``make`` callback so nothing is computed on a hit. Until the context offers ``memo(key, make)``
itself, the cache lives on the context instance, so it is dropped with the run like its weights.
"""
from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


def memo(ctx, key, make: Callable[[], T]) -> T:
    method = getattr(ctx, "memo", None)
    if callable(method):
        return method(key, make)
    store = ctx.__dict__.setdefault("kernel_memo", {})
    if key not in store:
        store[key] = make()
    return store[key]
