"""Which devices a decode or encode spreads its tiles over: the ``devices`` a person types, checked in one
place, and the list the engine runs on.

A person types ``auto`` (every visible CUDA device with enough free memory, the main one first; on one
GPU or on the CPU that is the main device alone, i.e. the single-device engine) or CUDA indices such as
``0,1``. The engine also takes a sequence of devices (``["cuda:0", "cuda:1"]``, or ``["cpu", "cpu"]`` in
the tests: two workers on the CPU).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .runtime import free_memory

AUTO = "auto"
MAX_TEXT = 200


def parse_devices(text: str) -> list[int] | None:
    """CUDA indices in ``text`` ("0,1", "cuda:0, cuda:1"), or None for ``auto``; ValueError names the fix."""
    problem = devices_problem(text)
    if problem:
        raise ValueError(problem)
    text = text.strip().lower()
    if text == AUTO:
        return None
    return [_index(part) for part in text.split(",")]


def _index(part: str) -> int:
    part = part.strip()
    if part.startswith("cuda:"):
        part = part[5:]
    if not part.isdigit():
        raise ValueError(part)
    return int(part)


def devices_problem(text, visible: int | None = None, name: str = "devices") -> str | None:
    """Why ``text`` is not a usable devices input, or None. ``visible``: how many CUDA devices this
    process sees (None: not checked)."""
    if not isinstance(text, str):
        return f"{name} must be text such as 'auto' or '0,1', got {text!r}"
    clean = text.strip().lower()
    if clean == AUTO:
        return None
    if not clean or len(clean) > MAX_TEXT:
        return f"{name} is empty or too long: set 'auto' or CUDA device indices such as '0,1'"
    indices = []
    for part in clean.split(","):
        try:
            indices.append(_index(part))
        except ValueError:
            return (f"{name} {text!r} is not understood: set 'auto' or CUDA device indices separated by commas, "
                    f"such as '0,1'")
    if len(set(indices)) != len(indices):
        return f"{name} {text!r} names a device twice: list each CUDA device once, such as '0,1'"
    if visible is not None:
        if visible == 0:
            return f"{name} {text!r} names CUDA devices, but this ComfyUI sees none: set 'auto'"
        missing = [i for i in indices if i >= visible]
        if missing:
            return (f"{name} {text!r}: there is no CUDA device {missing[0]} (this ComfyUI sees {visible}: "
                    f"0 to {visible - 1}); set 'auto' or indices below {visible}")
    return None


def visible_cuda_devices() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_devices(spec, main: torch.device, need_bytes: int = 0) -> list[torch.device]:
    """The devices a run spreads its tiles over, the main device first when it is among them.

    ``spec``: None (the main device alone), ``"auto"``/a text as :func:`parse_devices` reads it, or a
    sequence of devices (torch.device, "cuda:1", an int index, "cpu"; a device may repeat, each entry is
    one worker). ``auto`` takes every visible CUDA device with at least ``need_bytes`` free besides the
    main one, and only the main device when that is not CUDA."""
    main = torch.device(main)
    if spec is None:
        return [main]
    if isinstance(spec, str):
        indices = parse_devices(spec)
        if indices is None:
            return _auto(main, need_bytes)
        if visible_cuda_devices() == 0:
            raise ValueError(f"devices {spec!r} names CUDA devices, but none is visible: set 'auto'")
        spec = indices
    devices = [_device(d) for d in spec]
    if not devices:
        raise ValueError("devices is empty: name at least one device, or pass None for the main device alone")
    return _main_first(devices, main)


def _device(d) -> torch.device:
    if isinstance(d, int) and not isinstance(d, bool):
        return torch.device("cuda", d)
    device = torch.device(d)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _main_first(devices: Sequence[torch.device], main: torch.device) -> list[torch.device]:
    main = _device(main)
    if main in devices:
        rest = list(devices)
        rest.remove(main)
        return [main, *rest]
    return list(devices)


def _auto(main: torch.device, need_bytes: int) -> list[torch.device]:
    main = _device(main)
    if main.type != "cuda":
        return [main]
    others = [torch.device("cuda", i) for i in range(visible_cuda_devices()) if i != main.index]
    return [main, *[d for d in others if (free_memory(d) or 0) >= need_bytes]]
