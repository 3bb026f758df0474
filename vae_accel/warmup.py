"""Compile the VAE kernels before the first real call: a tiny decode and encode, optionally in the background.

The engine's norm kernel is Triton, compiled per channel width and dtype on first use and kept in Triton's
on-disk cache. On a machine whose cache is empty (a new install, a new Triton) the first Wan 2.1 decode of a
process paid ~3 s for it on an H200 (bench/results/vae_kernels_dupup_h200.json: 7.49 s against 3.84 s with
the cache filled; native 5.02 s). :func:`warm_up` runs a tiny decode and encode of a Wan VAE of the real
widths through the default path, tiled and sliced as a real call is, so every variant a real call needs is
compiled (and Triton's own first-use helpers built) in a few seconds of otherwise idle time. ComfyUI starts
it in the background when it loads our nodes (nodes/kernel_warmup.py), minutes before the first decode;
:func:`wait` stops a warm-up still running when a real call comes (after its current tiny pass, so the two
never compile beside each other) rather than make the call wait for VAEs it does not run. A warm-up never raises: a failure is one log line, and the first real call compiles as before.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable

import torch

log = logging.getLogger("wan_accel")

WARM_LATENT = (3, 16, 16)  # latent frames, height, width: a first slice and later ones, tiles of every kind
WARM_TILE = 8  # latent pixels: four tiles with halos on every side, beside the whole-frame run

_lock = threading.Lock()
_running: threading.Thread | None = None
_stop = threading.Event()  # a real call came: finish the pass under way, skip the rest
last_result: dict = {}


def warm_up(vae, device: torch.device | str, dtype: torch.dtype, stop: Callable[[], bool] = lambda: False,
            **options) -> dict:
    """A tiny decode and encode of ``vae`` (a Wan VAE module at its real widths; weight values do not
    matter) on ``device`` in ``dtype``: whole-frame and tiled, first and later slices; ``options`` are
    RunOptions fields for every call (tests pin the layout); ``stop()`` true skips the passes still to
    come. Returns the seconds each took: ``{"decode_s", "encode_s"}`` (those that ran). Raises what the
    engine raises (callers in the background catch it)."""
    from .adapters import build_decoder, build_encoder, find_module
    from .decode import decode
    from .encode import encode

    device = torch.device(device)
    dec, enc = build_decoder(find_module(vae)), build_encoder(find_module(vae))
    t, h, w = WARM_LATENT
    gen = torch.Generator().manual_seed(0)
    latent = torch.randn(1, dec.latent_channels, t, h, w, generator=gen)
    frames = 1 + enc.time_factor * (t - 1)
    sf = enc.space_factor
    video = torch.rand(1, enc.in_channels, frames, h * sf, w * sf, generator=gen) * 2 - 1
    out = {}
    for kind, call in (("decode", lambda **o: decode(vae, latent, **o)), ("encode", lambda **o: encode(vae, video, **o))):
        start = time.perf_counter()
        for extra in ({}, {"tile": WARM_TILE, "slice_len": 1}):
            if stop():
                return out
            call(device=device, dtype=dtype, progress=False, devices=None, **extra, **options)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out[f"{kind}_s"] = round(time.perf_counter() - start, 3)
    return out


def start_background(make_vaes: Callable[[], Iterable[tuple[str, object]]], device: torch.device | str,
                     dtype: torch.dtype) -> threading.Thread | None:
    """Warm up every VAE ``make_vaes()`` yields as ``(name, module)`` (built one at a time, dropped after
    its warm-up, the device's cached memory given back) on a daemon thread; None if one is running."""
    global _running
    with _lock:
        if _running is not None and _running.is_alive():
            return None
        _stop.clear()
        _running = threading.Thread(target=_run, args=(make_vaes, torch.device(device), dtype),
                                    name="wan_accel kernel warm-up", daemon=True)
        _running.start()
        return _running


def _run(make_vaes, device: torch.device, dtype: torch.dtype) -> None:
    start = time.perf_counter()
    done = {}
    try:
        with torch.inference_mode():
            for name, vae in make_vaes():
                done[name] = warm_up(vae, device, dtype, stop=_stop.is_set)
                del vae
                if _stop.is_set():
                    done["stopped"] = "a VAE call came first"
                    break
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    except Exception as exc:  # never fatal: the first real call compiles what is missing
        log.warning("wan_accel: kernel warm-up on %s stopped (%s: %s); the first VAE call compiles what it needs",
                    device, type(exc).__name__, exc)
        done["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    done["seconds"] = round(time.perf_counter() - start, 3)
    last_result.clear()
    last_result.update(done)
    log.info("wan_accel: VAE kernels ready on %s in %.1f s (%s)%s", device, done["seconds"],
             ", ".join(k for k in done if k not in ("seconds", "error", "stopped")) or "none",
             "; stopped early for a VAE call, which compiles what is missing" if "stopped" in done else "")


def wait() -> float:
    """Before a real call: a background warm-up still running finishes the tiny pass it is in and stops
    (the call compiles what is left itself, so it never waits for kernels of VAEs it does not run);
    this blocks until then (not on the warm-up's own thread) and returns the seconds waited."""
    thread = _running
    if thread is None or thread is threading.current_thread() or not thread.is_alive():
        return 0.0
    start = time.perf_counter()
    _stop.set()
    log.info("wan_accel: a VAE call came during the kernel warm-up; it finishes its current pass first")
    thread.join()
    return time.perf_counter() - start
