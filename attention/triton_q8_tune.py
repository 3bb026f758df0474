"""Launch configurations of the ``triton_q8`` kernel: candidates per GPU, the pick, its caches.

The first call of a shape class on a GPU runs a short list of candidates (a config is the launch
shape and the kind of P·V product, FP8 or 16-bit) on that call's data: each candidate's output is
checked against float32 attention first (the dispatcher's thresholds), and only the ones that pass
are timed (three launches each); the fastest of those is the pick. A candidate that fails the check
can never be picked, cached or saved. The pick is kept in memory and in a JSON file next to
Triton's own cache (``$TRITON_CACHE_DIR`` or ``~/.triton/cache``; ``WAN_ACCEL_TRITON_Q8_CACHE`` names
another file, an empty value turns the file off), keyed by GPU, Triton version, head dim, kinds and
the power-of-two classes of the query and key lengths. A process that finds the file does not tune.
Triton's ``autotune`` is not used because a candidate here is two launches (quantisation and
attention) whose kinds also change the buffers.
"""
from __future__ import annotations

import json
import logging
import os
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

log = logging.getLogger("wan_accel.attention")

CACHE_ENV = "WAN_ACCEL_TRITON_Q8_CACHE"
CONFIG_ENV = "WAN_ACCEL_TRITON_Q8_CONFIG"
AUTOTUNE_ENV = "WAN_ACCEL_TRITON_Q8_AUTOTUNE"
MAX_BLOCK_N = 128  # key buffers are padded to a multiple of this


@dataclass(frozen=True)
class Config:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    use_tma: bool = False  # Hopper+: K and V tiles through tensor descriptors (TMA)
    warp_specialize: bool = False  # Triton's warp specialisation of the key loop (Blackwell first)
    pv: str = ""  # P·V product: "fp8", "16bit", or "" for the GPU's first kind
    i2f_add: bool = False  # INT8 Q·K: int32 scores to float32 by an integer add (no conversion instruction)
    k_block: bool = False  # one K scale per 128 keys (not per key): a score is one FMA from its product

    def label(self) -> str:
        extra = ("_tma" if self.use_tma else "") + ("_ws" if self.warp_specialize else "")
        extra += ("_i2fadd" if self.i2f_add else "") + ("_kb" if self.k_block else "")
        extra += f"_pv{self.pv}" if self.pv else ""
        return f"m{self.block_m}_n{self.block_n}_w{self.num_warps}_s{self.num_stages}{extra}"

    @classmethod
    def parse(cls, text: str) -> "Config":
        """``"128,64,4,3"`` or ``"128,128,8,2,tma"`` (``ws`` adds warp specialisation, ``i2fadd`` the
        conversion by addition, ``kb`` block scales of K, ``pv=16bit`` or ``pv=fp8`` fixes the P·V
        kind)."""
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            block_m, block_n, warps, stages = (int(p) for p in parts[:4])
        except ValueError:
            raise ValueError(f"{CONFIG_ENV}={text!r}: expected BLOCK_M,BLOCK_N,WARPS,STAGES[,tma][,ws][,kb][,pv=16bit]"
                             ) from None
        flags = set(parts[4:])
        known = {"tma", "ws", "i2fadd", "kb", "pv=fp8", "pv=16bit"}
        if flags - known:
            raise ValueError(f"{CONFIG_ENV}={text!r}: unknown flags {sorted(flags - known)} (known: {', '.join(sorted(known))})")
        pv = "fp8" if "pv=fp8" in flags else "16bit" if "pv=16bit" in flags else ""
        cfg = cls(block_m, block_n, warps, stages, "tma" in flags, "ws" in flags, pv, "i2fadd" in flags,
                  "kb" in flags)
        cfg.check()
        return cfg

    def check(self) -> None:
        for name, value in (("block_m", self.block_m), ("block_n", self.block_n)):
            if value not in (16, 32, 64, 128, 256):
                raise ValueError(f"triton_q8 {name} {value}: use 16, 32, 64, 128 or 256")
        if not 32 <= self.block_n <= MAX_BLOCK_N:
            raise ValueError(f"triton_q8 block_n must be 32..{MAX_BLOCK_N} (the K dimension of an 8-bit P·V "
                             "product; key buffers are padded to the largest)")


def candidates(capability: tuple[int, int] | None, head_dim: int, pv_kinds: tuple[str, ...] = ("",)) -> list[Config]:
    """The short list run at tuning time, best guess first, for each allowed P·V kind (``pv_kinds``,
    preferred first: a kind that fails the accuracy check on this GPU loses to the next). Chosen
    from compiles for each target with the spill count in view (a 128-row query block needs 8 warps
    at head dim 128, or its float32 accumulator spills); ``bench/triton_q8.py`` sweeps a wider grid
    on a GPU. No GPU (the CPU interpreter) gets one small portable entry per kind."""
    if capability is None:
        shapes = [Config(64, 64, 4, 2)]
    elif capability >= (9, 0):
        # H200 (bench/results/triton_q8_variants_h200.json, 14B shape): one K scale per 128 keys with the
        # biased int32 scores and 3 stages 189.95 ms; the same with per-key scales and 2 stages 225.8 ms;
        # cuDNN SDPA 248.4 ms
        # (3 stages with per-key scales, 209.7 ms, is the alternative should block scales fail the check)
        shapes = [Config(64, 128, 4, 3, use_tma=True, i2f_add=True, k_block=True), Config(64, 128, 4, 3, use_tma=True)]
    elif head_dim <= 64:
        shapes = [Config(128, 64, 4, 3), Config(64, 64, 4, 3)]
    else:
        shapes = [Config(128, 64, 8, 3), Config(64, 64, 4, 3)]
    return [replace(c, pv=pv) for pv in pv_kinds for c in shapes]


def length_class(n: int) -> int:
    """Power-of-two class of a sequence length: shapes of one class share a pick."""
    return 1 << max(0, (int(n) - 1).bit_length())


def cache_path() -> Path | None:
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return Path(value) if value else None
    base = os.environ.get("TRITON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".triton", "cache")
    return Path(base) / "wan_accel_triton_q8.json"


def time_ms(fn: Callable[[], object], reps: int = 3) -> float:
    """Median of ``reps`` timings of ``fn`` (already compiled): CUDA events on a GPU, else wall time."""
    import time

    import torch

    times = []
    for _ in range(reps):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


class Tuner:
    """Picks a :class:`Config` per key, once; remembers it in memory and on disk."""

    def __init__(self) -> None:
        self.picks: dict[str, Config] = {}
        self.timings: dict[str, dict[str, float | str]] = {}  # key -> candidate label -> ms or error
        self._disk_loaded = False

    def reset(self) -> None:
        self.picks.clear()
        self.timings.clear()
        self._disk_loaded = False

    def _load_disk(self) -> None:
        self._disk_loaded = True
        path = cache_path()
        if path is None or not path.is_file():
            return
        try:
            data = json.loads(path.read_text())
            for key, fields in data.items():
                self.picks.setdefault(key, Config(**fields))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("triton_q8: ignoring the tuning cache %s (%s)", path, exc)

    def _save_disk(self) -> None:
        path = cache_path()
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                data = json.loads(path.read_text()) if path.is_file() else {}
            except ValueError:
                data = {}
            data.update({k: asdict(c) for k, c in self.picks.items()})
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            tmp.replace(path)
        except OSError as exc:
            log.warning("triton_q8: could not write the tuning cache %s (%s)", path, exc)

    def pick(self, key: str, cands: list[Config], measure: Callable[[Config], float],
             check: Callable[[Config], str | None]) -> Config:
        """The config for ``key``: cached, or the fastest by ``measure`` (milliseconds) of the ``cands``
        whose ``check`` (run first: the output against float32 attention) returns None rather than a
        reason. Candidates come grouped by P·V kind, preferred first: once one of a kind passes, the later
        kinds are not tried (each try compiles a kernel, and the first call of a graph pays them).
        ``WAN_ACCEL_TRITON_Q8_CONFIG`` replaces the candidates with the one it names (still
        checked, never saved); ``WAN_ACCEL_TRITON_Q8_AUTOTUNE=0`` takes the first that passes, untimed.
        A candidate that raises is skipped; when none passes, :class:`NoVerifiedConfig` says why."""
        forced = os.environ.get(CONFIG_ENV)
        if forced:
            cands, key = [Config.parse(forced)], f"{key}|{CONFIG_ENV}={forced}"
        if key in self.picks:
            return self.picks[key]
        if not forced and not self._disk_loaded:
            self._load_disk()
            if key in self.picks:
                return self.picks[key]
        timed = os.environ.get(AUTOTUNE_ENV, "1") != "0" and len(cands) > 1
        results: dict[str, float | str] = {}
        best, best_ms = None, float("inf")
        for cfg in cands:
            if best is not None and cfg.pv != best.pv:
                results[cfg.label()] = f"not tried: a {best.pv or 'preferred'} P·V candidate passed"
                continue
            try:
                reason = check(cfg)
                if reason is not None:
                    results[cfg.label()] = f"failed verification: {reason}"
                    continue
                if not timed:
                    best = cfg
                    break
                ms = float(measure(cfg))
            except Exception as exc:  # compile error, out of shared memory...
                results[cfg.label()] = f"{type(exc).__name__}: {exc}"[:300]
                continue
            results[cfg.label()] = ms
            if ms < best_ms:
                best, best_ms = cfg, ms
        self.timings[key] = results
        if best is None:
            raise NoVerifiedConfig(f"triton_q8: no launch config passed verification for {key} ("
                                   + "; ".join(f"{k}: {v}" for k, v in results.items()) + ")")
        log.info("triton_q8: %s -> %s (%s)", key, best.label(),
                 ", ".join(f"{k} {v:.2f} ms" if isinstance(v, float) else f"{k} {v[:80]}" for k, v in results.items()))
        self.picks[key] = best
        if not forced:
            self._save_disk()
        return best


class NoVerifiedConfig(RuntimeError):
    """Every candidate failed its check or raised: the dispatcher falls back for this shape."""
