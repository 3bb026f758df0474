"""The registry of attention backends and what a backend is.

Each backend is small: a probe (is its package importable and usable here, detected at run time
and cached), what it supports (dtypes, head dims, masks, devices, compute capability), and a
``run(call)`` that takes the normalised :class:`~..contract.AttnCall` (q/k/v as ``(B, H, L, D)``
views) and returns ``(B, H, Lq, D)`` (a view is fine). ``auto`` and ``comfy_default`` are not
kernels: the dispatcher (:mod:`..override`) resolves them. A family that keeps caches (compiled
graphs, handles) registers a reset hook with :func:`on_reset`; :func:`reset_probes` knows no family.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from ..contract import AttnCall

HALF = (torch.float16, torch.bfloat16)
ALL_FLOAT = (torch.float16, torch.bfloat16, torch.float32)

# names the dispatcher resolves itself
AUTO = "auto"
COMFY_DEFAULT = "comfy_default"


@dataclass
class Backend:
    name: str
    doc: str
    run: Callable[[AttnCall], torch.Tensor]
    probe: Callable[[], None] = lambda: None  # raises (ImportError, RuntimeError...) when unusable
    dtypes: tuple = ALL_FLOAT
    devices: tuple = ("cuda", "cpu")
    head_dims: Callable[[int], bool] = lambda d: True
    head_dims_doc: str = "any"
    mask: bool = True
    min_capability: tuple | None = None  # CUDA compute capability
    max_capability: tuple | None = None
    low_precision: bool = False  # quantises q/k/v or P: refuses float32-precision and full-precision calls
    extra_check: Callable[[AttnCall], str | None] | None = None
    package: str = ""  # what to install, for messages
    # [] until probed, then [reason or None, package missing?, the probe's own message]
    probe_result: list = field(default_factory=list, repr=False)

    # -- availability ------------------------------------------------------------------------
    def unavailable_reason(self) -> str | None:
        """None when usable here; otherwise why not. Cached until :func:`reset_probes`."""
        if not self.probe_result:
            try:
                self.probe()
                self.probe_result.extend((None, False, ""))
            except Exception as exc:  # ImportError, missing symbol, no GPU...
                what = f"{type(exc).__name__}: {exc}"
                missing = isinstance(exc, ImportError)
                hint = f" (install {self.package})" if self.package and missing else ""
                self.probe_result.extend((f"{self.name} unavailable: {what}{hint}", missing, str(exc)))
        return self.probe_result[0]

    def status(self) -> str:
        """Short words for the node's list: ``ready``, ``not installed (...)`` or ``not usable here (...)``."""
        if self.unavailable_reason() is not None:
            _reason, missing, message = self.probe_result
            if missing:
                return f"not installed (pip install {self.package})" if self.package else f"not installed ({message})"
            return f"not usable here ({message})"
        if "cpu" not in self.devices and torch.cuda.is_available():
            cap = torch.cuda.get_device_capability()
            if self.min_capability and cap < self.min_capability:
                return f"not usable here (needs compute capability {self.min_capability}+, this GPU is {cap})"
            if self.max_capability and cap > self.max_capability:
                return f"not usable here (supports compute capability up to {self.max_capability}, this GPU is {cap})"
        return "ready"

    @property
    def available(self) -> bool:
        return self.unavailable_reason() is None

    # -- what it takes -----------------------------------------------------------------------
    def unsupported_reason(self, call: AttnCall) -> str | None:
        """None when this backend can take the call exactly; otherwise why not (one short line)."""
        dev = call.device
        if dev.type not in self.devices:
            return f"{self.name} does not run on {dev.type}"
        if call.dtype not in self.dtypes:
            return f"{self.name} does not take {str(call.dtype).replace('torch.', '')}"
        if not self.head_dims(call.head_dim):
            return f"{self.name} does not take head dim {call.head_dim} (takes {self.head_dims_doc})"
        if call.mask is not None and not self.mask:
            return f"{self.name} would ignore the attention mask"
        if call.v.shape[-1] != call.head_dim:
            return f"{self.name}: v head dim {call.v.shape[-1]} differs from q's {call.head_dim}"
        if self.low_precision and call.wants_fp32:
            return f"{self.name} quantises; the call asks for attn_precision=float32"
        if self.low_precision and not call.low_precision_ok:
            return f"{self.name} quantises; the call asks for full precision (low_precision_attention=False)"
        if dev.type == "cuda" and (self.min_capability or self.max_capability):
            cap = torch.cuda.get_device_capability(dev)
            if self.min_capability and cap < self.min_capability:
                return f"{self.name} needs compute capability >= {self.min_capability}, this GPU is {cap}"
            if self.max_capability and cap > self.max_capability:
                return f"{self.name} supports compute capability <= {self.max_capability}, this GPU is {cap}"
        if self.extra_check is not None:
            return self.extra_check(call)
        return None

    def reason_not_to_run(self, call: AttnCall) -> str | None:
        return self.unavailable_reason() or self.unsupported_reason(call)


REGISTRY: dict[str, Backend] = {}
RESET_HOOKS: list[Callable[[], None]] = []


def register(backend: Backend) -> Backend:
    REGISTRY[backend.name] = backend
    return backend


def on_reset(hook: Callable[[], None]) -> Callable[[], None]:
    """Run ``hook`` on every :func:`reset_probes` (a family forgetting its own caches)."""
    RESET_HOOKS.append(hook)
    return hook


def get(name: str) -> Backend:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown attention backend {name!r}; known: {', '.join(names())}") from None


def names(include_meta: bool = True) -> list[str]:
    out = list(REGISTRY)
    return out + [AUTO, COMFY_DEFAULT] if include_meta else out


def available(names_: Iterable[str] | None = None) -> list[str]:
    return [n for n in (names_ or REGISTRY) if REGISTRY[n].available]


def statuses() -> dict[str, str]:
    """Every registered backend's :meth:`Backend.status` (probes each once; cached)."""
    return {name: b.status() for name, b in REGISTRY.items()}


def reset_probes() -> None:
    """Forget cached availability and every family's caches (after installing a package, or in tests)."""
    for b in REGISTRY.values():
        b.probe_result.clear()
    for hook in RESET_HOOKS:
        hook()


def load(module: str):
    """Import ``module`` (a probe's import: raises ImportError when the package is missing)."""
    return importlib.import_module(module)


def need_cuda() -> None:
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device")


def probe_for(module: str, *attrs: str, cuda: bool = True) -> Callable[[], None]:
    """A probe: ``module`` imports and has ``attrs``, and (``cuda``) a CUDA device is present."""
    def probe() -> None:
        mod = load(module)
        for attr in attrs:
            if not hasattr(mod, attr):  # installed, but not a version that has it
                raise RuntimeError(f"the installed {module} has no {attr}")
        if cuda:
            need_cuda()

    return probe
