"""The per-model attention override: backend choice, schedule, fallback, verification, ``auto``.

ComfyUI (0.3.60+) calls ``transformer_options["optimized_attention_override"](func, *args, **kwargs)``
from the ``wrap_attn`` decorator around its attention functions, where ``func`` is the attention
function the model would have used and ``kwargs`` carries ``_inside_attn_wrapper=True`` so calling
``func(*args, **kwargs)`` runs it without consulting the override again. :class:`AttentionOverride`
is such a callable. Nothing here imports ComfyUI.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from ..telemetry.phases import note
from . import backends
from .autotune import TUNER, AutoTuner
from .contract import AttnCall, UnsupportedCall
from .schedule import Schedule
from .verify import DEFAULT_MAX_REL_ERROR, DEFAULT_MIN_COSINE, compare, reference_rows

log = logging.getLogger("wan_accel.attention")
# memory may be free again at the next call: an OOM costs that call only, never the backend
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def _check_name(name: str) -> str:
    if name not in backends.names():
        raise ValueError(f"unknown attention backend {name!r}; known: {', '.join(backends.names())}")
    return name


class AttentionOverride:
    """``transformer_options["optimized_attention_override"]`` for one model.

    backend: used for calls the schedule selects; fallback: the others, and any call the backend
    cannot take (missing package, a mask it would ignore, unsupported head dim/dtype/device, an
    exception, failed verification). ``comfy_default`` means ComfyUI's own function (or the override
    this one chains to). ``previous``: an override that was on the model before, chained, not lost.
    """

    def __init__(self, backend: str = "sdpa", fallback: str = "sdpa", *, verify: bool = True,
                 schedule: Schedule | None = None, previous: Callable | None = None,
                 min_cosine: float = DEFAULT_MIN_COSINE, max_rel_error: float = DEFAULT_MAX_REL_ERROR,
                 label: str = "", tuner: AutoTuner | None = None, node_id: str | None = None):
        self.backend = _check_name(backend)
        self.fallback = _check_name(fallback)
        self.verify = bool(verify)
        self.schedule = schedule or Schedule()
        self.previous = previous
        self.min_cosine = float(min_cosine)
        self.max_rel_error = float(max_rel_error)
        self.label = label
        self.node_id = node_id  # the WanAccelAttention node that made this override, for telemetry
        self.tuner = tuner or TUNER
        self.verified: dict[tuple, bool] = {}  # (backend, call key) -> passed?
        self._logged: set = set()
        self.last_used: str | None = None  # the backend that produced the last output (tests, telemetry)
        self.counts: dict[str, int] = {}
        self._plan: dict[tuple, str] = {}  # (scheduled backend, call key) -> backend that serves it
        self._reported: set = set()  # (call key, requested, backend, fallback) told to telemetry this run

    # ModelPatcher.clone() deep-copies model_options: share this object (and its caches) instead
    def __deepcopy__(self, memo):
        return self

    def __repr__(self) -> str:
        return (f"AttentionOverride(backend={self.backend!r}, fallback={self.fallback!r}, verify={self.verify}, "
                f"schedule={self.schedule!r}, chained={self.previous is not None})")

    def new_run(self) -> None:
        """A sampler starts: forget which backend serves each shape (verifications and ``auto``'s choices
        stay), so each shape is reported to telemetry again, on the node that runs it this time."""
        self._plan.clear()
        self._reported.clear()

    def _once(self, level: int, key: tuple, msg: str, *args) -> bool:
        if key in self._logged:
            return False
        self._logged.add(key)
        log.log(level, msg, *args)
        return True

    def __call__(self, func: Callable, *args, **kwargs):
        def default():
            if self.previous is not None:  # an override, like this one: it gets the call as it came
                return self.previous(func, *args, **kwargs)
            # as ComfyUI's wrap_attn does without an override: the model's preferred attention for this
            # layer, if it has one, before the default function, and neither sees preferred_attention
            preferred = getattr(kwargs.get("preferred_attention"), "function", None)
            rest = {k: v for k, v in kwargs.items() if k != "preferred_attention"}
            return (preferred or func)(*args, **rest)

        try:
            call = AttnCall.from_args(args, kwargs)
        except UnsupportedCall as exc:
            return self._decline(str(exc), args, default)
        except Exception as exc:
            return self._decline(f"cannot read the call ({exc})", args, default)
        topts = kwargs.get("transformer_options") or {}
        primary = self.backend if self.schedule.everything or self.schedule.matches(call, topts) else self.fallback
        return self.dispatch(call, primary, default)

    def dispatch(self, call: AttnCall, primary: str, default: Callable[[], Any]):
        key = call.key()
        planned = self._plan.get((primary, key))
        skip = None
        if planned is not None:  # steady state: the decision for this shape is made
            if planned == backends.COMFY_DEFAULT:
                self._count(planned)
                return default()
            try:
                out = backends.REGISTRY[planned].run(call)
                self._count(planned)
                return call.finish(out)
            except OUT_OF_MEMORY:
                skip = planned  # handled below, once the exception (and what it holds) is released
            except Exception as exc:
                self.verified[(planned, key)] = False
                del self._plan[(primary, key)]
                self._once(logging.WARNING, ("error", planned, key), "wan_accel attention: %s raised at %s (%s: %s): "
                           "using the fallback for this shape", planned, call.shape_str(), type(exc).__name__, exc)
        reasons: list[str] = []
        if skip is not None:
            reasons.append(self._out_of_memory(skip, call))
        return self._resolve(call, primary, default, reasons, skip)

    def _resolve(self, call: AttnCall, primary: str, default: Callable[[], Any], reasons: list, skip: str | None):
        """Walk primary -> fallback -> ComfyUI's function; the first that takes the call serves it, and
        serves this shape from now on unless an out-of-memory error made this a one-call detour."""
        remember = skip is None
        order = [primary] + [n for n in (self.fallback, backends.COMFY_DEFAULT) if n != primary]
        auto: dict = {}
        for name in order:
            if name == backends.AUTO:
                name, auto = self._auto(call)
                if name != backends.COMFY_DEFAULT:
                    self.verified.setdefault((name, call.key()), True)  # auto verified it while timing
            if name == skip:
                continue
            if name == backends.COMFY_DEFAULT:
                out = default()
                self._used(backends.COMFY_DEFAULT, primary, call, reasons, auto, remember)
                return out
            out, out_of_memory = self._try(name, call, reasons)
            remember = remember and not out_of_memory
            if out is not None:
                self._used(name, primary, call, reasons, auto, remember)
                return call.finish(out)
        raise AssertionError("unreachable: comfy_default always runs")

    def _decline(self, reason: str, args: tuple, default: Callable[[], Any]):
        """A call no kernel here can take as it is: ComfyUI's function runs it, with its keywords unchanged."""
        self._once(logging.WARNING, ("decline", reason), "wan_accel attention%s: %s; ComfyUI's attention runs such "
                   "calls", f" [{self.label}]" if self.label else "", reason)
        self._count(backends.COMFY_DEFAULT)
        shape = " ".join(f"{n}{tuple(t.shape)}" for n, t in zip("qkv", args) if hasattr(t, "shape"))
        self._report(shape, ("declined", reason), backends.COMFY_DEFAULT, self.backend,
                     self.backend != backends.COMFY_DEFAULT, "fallback: " + reason)
        return default()

    def _out_of_memory(self, name: str, call: AttnCall) -> str:
        self._once(logging.WARNING, ("oom", name, call.key()), "wan_accel attention: %s ran out of memory at %s: the "
                   "fallback serves that call, %s stays the choice for the next ones", name, call.shape_str(), name)
        return f"{name} ran out of memory (this call only)"

    def _auto(self, call: AttnCall) -> tuple[str, dict]:
        """``auto``'s choice for the call, and what telemetry says of it (tuned now or reused, timings)."""
        key = self.tuner.key(call, self.min_cosine, self.max_rel_error)
        reused = key in self.tuner.choices
        name = self.tuner.choose(call, self.min_cosine, self.max_rel_error, self.label)
        timings = {n: v["ms"] for n, v in self.tuner.results.get(key, {}).items() if isinstance(v, dict)}
        extra = {"timings": timings}
        if not call.low_precision_ok:
            self._once(logging.INFO, ("auto full precision",), "wan_accel attention%s: auto leaves the quantising "
                       "kernels out of calls marked low_precision_attention=False (e.g. Wan's i2v image "
                       "cross-attention)", f" [{self.label}]" if self.label else "")
            extra["full_precision"] = True
        return name, {"reason": "auto (cached)" if reused else "auto", "extra": extra}

    def _count(self, name: str) -> None:
        self.last_used = name
        self.counts[name] = self.counts.get(name, 0) + 1

    def _used(self, name: str, primary: str, call: AttnCall, reasons: list, auto: dict, remember: bool) -> None:
        """Count the call, remember who serves this shape, and tell telemetry (once per shape, outcome
        and run)."""
        self._count(name)
        if remember:
            self._plan[(primary, call.key())] = name
        if reasons:
            self._once(logging.INFO, ("fallback", name, call.key()), "wan_accel attention%s: %s -> %s",
                       f" [{self.label}]" if self.label else "", "; ".join(reasons), name)
            reason = "fallback: " + "; ".join(reasons)
            self._report(call.shape_str(), call.key(), name, primary, True, reason)
        elif primary == backends.AUTO:  # auto's own choice is not a fallback
            self._report(call.shape_str(), call.key(), name, primary, False, auto["reason"], **auto["extra"])
        else:
            self._report(call.shape_str(), call.key(), name, primary, False,
                         "as set" if primary == self.backend else "scheduled: the node's fallback for these calls")

    def _report(self, shape: str, key: tuple, backend: str, requested: str, fallback: bool, reason: str,
                **extra) -> None:
        """One telemetry note per shape (``key``), outcome and run."""
        outcome = (key, requested, backend, fallback)
        if outcome in self._reported:
            return
        self._reported.add(outcome)
        note("attention_backend", model=self.label, shape=shape, backend=backend, requested=requested,
             fallback=fallback, reason=reason, node_id=self.node_id, **extra)

    def _try(self, name: str, call: AttnCall, reasons: list) -> tuple[Any, bool]:
        """(``name``'s output or None, whether it ran out of memory); a refusal's reason goes to ``reasons``."""
        b = backends.get(name)
        reason = b.reason_not_to_run(call)
        if reason:
            self._once(logging.WARNING if "unavailable" in reason else logging.INFO, ("reason", reason),
                       "wan_accel attention: %s; handing such calls to the fallback", reason)
            reasons.append(reason)
            return None, False
        vkey = (name, call.key())
        state = self.verified.get(vkey)
        if state is False:
            reasons.append(f"{name} failed verification for {call.shape_str()}")
            return None, False
        out_of_memory = False
        try:
            out = b.run(call)
            if self.verify and state is None:
                verdict = compare(out, *reference_rows(call), min_cosine=self.min_cosine,
                                  max_rel_error=self.max_rel_error)
                self.verified[vkey] = verdict.ok
                if not verdict.ok:
                    self._once(logging.WARNING, ("verify", vkey), "wan_accel attention: %s failed verification at %s "
                               "(%s; thresholds cosine >= %s, relative error <= %s): using the fallback for this shape",
                               name, call.shape_str(), verdict.describe(), self.min_cosine, self.max_rel_error)
                    reasons.append(f"{name} failed verification ({verdict.describe()})")
                    return None, False
                log.debug("wan_accel attention: %s verified at %s: %s", name, call.shape_str(), verdict.describe())
            return out, False
        except OUT_OF_MEMORY:
            out_of_memory = True  # not a verdict on the backend; handled once the exception is released
        except Exception as exc:
            self.verified[vkey] = False
            self._once(logging.WARNING, ("error", vkey), "wan_accel attention: %s raised at %s (%s: %s): "
                       "using the fallback for this shape", name, call.shape_str(), type(exc).__name__, exc)
            reasons.append(f"{name} raised {type(exc).__name__}")
            return None, False
        reasons.append(self._out_of_memory(name, call))
        return None, out_of_memory
