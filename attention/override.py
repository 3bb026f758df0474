"""The per-model attention override: backend choice, schedule, fallback, verification, ``auto``.

ComfyUI (0.3.60+) calls ``transformer_options["optimized_attention_override"](func, *args, **kwargs)``
from the ``wrap_attn`` decorator around its attention functions, where ``func`` is the attention
function the model would have used and ``kwargs`` carries ``_inside_attn_wrapper=True`` so calling
``func(*args, **kwargs)`` runs it without consulting the override again. :class:`AttentionOverride`
is such a callable. Nothing here imports ComfyUI.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..telemetry.phases import note
from . import backends as B
from . import verify as V
from .contract import AttnCall

log = logging.getLogger("wan_accel.attention")

ATTENTION_KINDS = ("all", "self", "cross")


# ---------------------------------------------------------------------------------------------
# schedule
# ---------------------------------------------------------------------------------------------
_RANGE = re.compile(r"^\s*(\d*)\s*(-?)\s*(\d*)\s*$")


def parse_ranges(spec: str) -> tuple[tuple[int, int | None], ...] | None:
    """``""``/``"all"`` -> None (everything); ``"0-3, 7, 10-"`` -> ((0, 3), (7, 7), (10, None)).
    Bounds are inclusive and 0-based. Raises ValueError on anything else."""
    spec = (spec or "").strip().lower()
    if spec in ("", "all", "*"):
        return None
    out = []
    for part in spec.split(","):
        m = _RANGE.match(part)
        if not m or not (m.group(1) or m.group(3)):
            raise ValueError(f"bad range {part!r} in {spec!r}: use e.g. '0-3, 7, 10-'")
        lo_s, dash, hi_s = m.groups()
        lo = int(lo_s) if lo_s else 0
        hi = (int(hi_s) if hi_s else None) if dash else lo
        if hi is not None and hi < lo:
            raise ValueError(f"empty range {part!r} in {spec!r}")
        out.append((lo, hi))
    return tuple(out)


def in_ranges(value: int, ranges) -> bool:
    return any(lo <= value and (hi is None or value <= hi) for lo, hi in ranges)


@dataclass
class Schedule:
    """Which calls use the chosen backend; the rest use the fallback."""
    attention: str = "all"  # all | self | cross
    steps: str = ""  # sampling-step ranges, 0-based, counted in this sampler's sigmas
    blocks: str = ""  # transformer block ranges (transformer_options["block_index"])
    _steps: Any = field(init=False, repr=False)
    _blocks: Any = field(init=False, repr=False)
    _last_sigma: Any = field(default=None, init=False, repr=False)
    _last_step: Any = field(default=None, init=False, repr=False)
    _fw_topts: Any = field(default=None, init=False, repr=False)
    _fw_self_calls: int = field(default=0, init=False, repr=False)

    def __post_init__(self):
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        self._steps = parse_ranges(self.steps)
        self._blocks = parse_ranges(self.blocks)

    @property
    def everything(self) -> bool:
        return self.attention == "all" and self._steps is None and self._blocks is None

    def step(self, topts: dict) -> int | None:
        """The sampling step: the index of ``sigmas`` (this call's) in ``sample_sigmas`` (the sampler's
        schedule). None outside sampling. Computed once per step (the sigma tensor changes per step)."""
        sig = topts.get("sigmas")
        sched = topts.get("sample_sigmas")
        if sig is None or sched is None:
            return None
        if sig is self._last_sigma:
            return self._last_step
        s = float(sig.flatten()[0])
        sched_t = torch.as_tensor(sched).flatten().float().cpu()
        step = int((sched_t - s).abs().argmin())
        self._last_sigma, self._last_step = sig, step
        return step

    def block(self, call: AttnCall, topts: dict) -> int:
        """``transformer_options["block_index"]`` (ComfyUI 0.8.0 sets it in Wan's block loop). Where it is
        missing (0.3.64 has no such key), count: each Wan block makes one self-attention call, then its cross-attention
        call(s); a forward pass gets a fresh transformer_options dict from the sampler."""
        bi = topts.get("block_index")
        if bi is not None:
            return int(bi)
        if topts is not self._fw_topts:
            self._fw_topts, self._fw_self_calls = topts, 0
        if call.is_self_attention:
            self._fw_self_calls += 1
        return max(self._fw_self_calls - 1, 0)

    def matches(self, call: AttnCall, topts: dict) -> bool:
        if self._blocks is not None:  # first: the block count must see every call
            if not in_ranges(self.block(call, topts), self._blocks):
                return False
        if self.attention != "all" and call.is_self_attention != (self.attention == "self"):
            return False
        if self._steps is not None:
            st = self.step(topts)
            if st is not None and not in_ranges(st, self._steps):
                return False
        return True


# ---------------------------------------------------------------------------------------------
# auto
# ---------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class AutoTuner:
    """Times every available backend that takes the call and passes verification, on the first call
    of each (shape, dtype, device, mask) key, keeps the fastest and reuses it."""

    def __init__(self, reps: int = 3, candidates: tuple[str, ...] | None = None, math_budget_bytes: float = 2**30):
        self.reps = reps
        self.candidates = candidates
        self.math_budget_bytes = math_budget_bytes
        self.choices: dict[tuple, str] = {}
        self.results: dict[tuple, dict[str, Any]] = {}
        self.tune_seconds: dict[tuple, float] = {}

    def clear(self) -> None:
        self.choices.clear()
        self.results.clear()
        self.tune_seconds.clear()

    @staticmethod
    def _time_one(b, call: AttnCall) -> float:
        _sync(call.device)
        t0 = time.perf_counter()
        b.run(call)
        _sync(call.device)
        return (time.perf_counter() - t0) * 1e3

    def _candidates(self, call: AttnCall) -> list[str]:
        if self.candidates:
            return list(self.candidates)
        names = B.names(include_meta=False)
        if call.device.type == "cuda":
            # exact pure-torch paths: never faster than a fused kernel on a GPU, and slow to time
            names = [n for n in names if n not in ("sdpa_math", "sub_quad")]
        elif call.batch * call.heads * call.q_len * call.k_len * 4 > self.math_budget_bytes:
            names = [n for n in names if n != "sdpa_math"]  # it would materialise the whole score matrix
        return names

    def choose(self, call: AttnCall, min_cosine: float, max_rel_error: float, label: str = "") -> str:
        key = call.key() + (min_cosine, max_rel_error)
        hit = self.choices.get(key)
        if hit is not None:
            # another model (the other Wan 2.2 expert) reuses the choice: tell telemetry for this one too
            note("attention_backend", model=label, shape=call.shape_str(), backend=hit, reason="auto (cached)")
            return hit
        t_start = time.perf_counter()
        table: dict[str, Any] = {}
        ref = None
        best, best_ms = None, float("inf")
        for name in self._candidates(call):
            b = B.get(name)
            reason = b.reason_not_to_run(call)
            if reason:
                table[name] = reason
                continue
            try:
                out = b.run(call)  # untimed: JIT/autotune/plan building happen here
                if ref is None:
                    ref = V.reference_rows(call)
                verdict = V.compare(out, *ref, min_cosine=min_cosine, max_rel_error=max_rel_error)
                del out
                if not verdict.ok:
                    table[name] = f"failed verification: {verdict.describe()}"
                    continue
                # one timed call first; only a contender (within 30 % of the best so far) gets the rest:
                # at the Wan 14B shape each slow candidate's extra calls cost seconds of the first step
                times = [self._time_one(b, call)]
                if times[0] < 1.3 * best_ms:
                    times += [self._time_one(b, call) for _ in range(self.reps - 1)]
                ms = sum(times) / len(times)
            except Exception as exc:
                table[name] = f"error: {type(exc).__name__}: {str(exc)[:200]}"
                continue
            table[name] = {"ms": ms, "cosine": verdict.cosine, "rel_error": verdict.rel_error}
            if ms < best_ms:
                best, best_ms = name, ms
        choice = best or B.COMFY_DEFAULT
        self.choices[key] = choice
        self.results[key] = table
        self.tune_seconds[key] = time.perf_counter() - t_start
        timed = ", ".join(f"{n} {v['ms']:.2f} ms" for n, v in table.items() if isinstance(v, dict))
        log.info("wan_accel attention auto%s: %s -> %s (%s; tuning took %.2f s)", f" [{label}]" if label else "",
                 call.shape_str(), choice, timed or "nothing usable", self.tune_seconds[key])
        note("attention_backend", model=label, shape=call.shape_str(), backend=choice, reason="auto",
             timings={n: v["ms"] for n, v in table.items() if isinstance(v, dict)})
        return choice


TUNER = AutoTuner()  # shared: two models (the two Wan 2.2 experts) with one shape tune once


# ---------------------------------------------------------------------------------------------
# the override
# ---------------------------------------------------------------------------------------------
def _check_name(name: str) -> str:
    if name not in B.names():
        raise ValueError(f"unknown attention backend {name!r}; known: {', '.join(B.names())}")
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
                 min_cosine: float = V.DEFAULT_MIN_COSINE, max_rel_error: float = V.DEFAULT_MAX_REL_ERROR,
                 label: str = "", tuner: AutoTuner | None = None):
        self.backend = _check_name(backend)
        self.fallback = _check_name(fallback)
        self.verify = bool(verify)
        self.schedule = schedule or Schedule()
        self.previous = previous
        self.min_cosine = float(min_cosine)
        self.max_rel_error = float(max_rel_error)
        self.label = label
        self.tuner = tuner or TUNER
        self.verified: dict[tuple, bool] = {}  # (backend, call key) -> passed?
        self._logged: set = set()
        self.last_used: str | None = None  # the backend that produced the last output (tests, telemetry)
        self.counts: dict[str, int] = {}
        self._plan: dict[tuple, str] = {}  # (scheduled backend, call key) -> backend that serves it

    # ModelPatcher.clone() deep-copies model_options: share this object (and its caches) instead
    def __deepcopy__(self, memo):
        return self

    def __repr__(self) -> str:
        return (f"AttentionOverride(backend={self.backend!r}, fallback={self.fallback!r}, verify={self.verify}, "
                f"schedule={self.schedule!r}, chained={self.previous is not None})")

    def _once(self, level: int, key: tuple, msg: str, *args) -> bool:
        if key in self._logged:
            return False
        self._logged.add(key)
        log.log(level, msg, *args)
        return True

    def __call__(self, func: Callable, *args, **kwargs):
        def default():
            if self.previous is not None:
                return self.previous(func, *args, **kwargs)
            return func(*args, **kwargs)

        try:
            call = AttnCall.from_args(args, kwargs)
        except Exception as exc:
            self._once(logging.WARNING, ("contract", str(exc)), "wan_accel attention: cannot read the call (%s); "
                       "using ComfyUI's attention", exc)
            self.last_used = B.COMFY_DEFAULT
            return default()
        topts = kwargs.get("transformer_options") or {}
        primary = self.backend if self.schedule.everything or self.schedule.matches(call, topts) else self.fallback
        return self.dispatch(call, primary, default)

    def dispatch(self, call: AttnCall, primary: str, default: Callable[[], Any]):
        key = call.key()
        planned = self._plan.get((primary, key))
        if planned is not None:  # steady state: the decision for this shape is made
            if planned == B.COMFY_DEFAULT:
                self._count(planned)
                return default()
            try:
                out = B.REGISTRY[planned].run(call)
                self._count(planned)
                return call.finish(out)
            except Exception as exc:
                self.verified[(planned, key)] = False
                del self._plan[(primary, key)]
                self._once(logging.WARNING, ("error", planned, key), "wan_accel attention: %s raised at %s (%s: %s): "
                           "using the fallback for this shape", planned, call.shape_str(), type(exc).__name__, exc)
        order = [primary] + [n for n in (self.fallback, B.COMFY_DEFAULT) if n != primary]
        reasons: list[str] = []
        for name in order:
            if name == B.AUTO:
                name = self.tuner.choose(call, self.min_cosine, self.max_rel_error, self.label)
                if name != B.COMFY_DEFAULT:
                    self.verified.setdefault((name, key), True)  # auto verified it while timing
            if name == B.COMFY_DEFAULT:
                out = default()
                self._used(B.COMFY_DEFAULT, primary, call, reasons)
                return out
            out = self._try(name, call, reasons)
            if out is not None:
                self._used(name, primary, call, reasons)
                return call.finish(out)
        raise AssertionError("unreachable: comfy_default always runs")

    def _count(self, name: str) -> None:
        self.last_used = name
        self.counts[name] = self.counts.get(name, 0) + 1

    def _used(self, name: str, primary: str, call: AttnCall, reasons: list) -> None:
        self._count(name)
        self._plan[(primary, call.key())] = name
        if reasons and self._once(logging.INFO, ("fallback", name, call.key()), "wan_accel attention%s: %s -> %s",
                                  f" [{self.label}]" if self.label else "", "; ".join(reasons), name):
            note("attention_backend", model=self.label, shape=call.shape_str(), backend=name,
                 reason="fallback: " + "; ".join(reasons))
        elif not reasons and primary != B.AUTO:  # auto's choice is reported by the tuner
            # once per shape (later calls take the cached plan), so telemetry shows what each model ran
            note("attention_backend", model=self.label, shape=call.shape_str(), backend=name, reason="as set")

    def _try(self, name: str, call: AttnCall, reasons: list):
        b = B.get(name)
        reason = b.reason_not_to_run(call)
        if reason:
            self._once(logging.WARNING if "unavailable" in reason else logging.INFO, ("reason", reason),
                       "wan_accel attention: %s; handing such calls to the fallback", reason)
            reasons.append(reason)
            return None
        vkey = (name, call.key())
        state = self.verified.get(vkey)
        if state is False:
            reasons.append(f"{name} failed verification for {call.shape_str()}")
            return None
        try:
            out = b.run(call)
            if self.verify and state is None:
                verdict = V.compare(out, *V.reference_rows(call), min_cosine=self.min_cosine,
                                    max_rel_error=self.max_rel_error)
                self.verified[vkey] = verdict.ok
                if not verdict.ok:
                    self._once(logging.WARNING, ("verify", vkey), "wan_accel attention: %s failed verification at %s "
                               "(%s; thresholds cosine >= %s, relative error <= %s): using the fallback for this shape",
                               name, call.shape_str(), verdict.describe(), self.min_cosine, self.max_rel_error)
                    reasons.append(f"{name} failed verification ({verdict.describe()})")
                    return None
                log.debug("wan_accel attention: %s verified at %s: %s", name, call.shape_str(), verdict.describe())
            return out
        except Exception as exc:
            self.verified[vkey] = False
            self._once(logging.WARNING, ("error", vkey), "wan_accel attention: %s raised at %s (%s: %s): "
                       "using the fallback for this shape", name, call.shape_str(), type(exc).__name__, exc)
            reasons.append(f"{name} raised {type(exc).__name__}")
            return None
