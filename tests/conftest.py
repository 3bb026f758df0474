"""Import the package the way ComfyUI does, never by putting the repo root on sys.path.

ComfyUI loads ``custom_nodes/<folder>/__init__.py`` with importlib under a path-like module
name; pip installs the same tree as ``wan_accel``. ``tools/package_loader.py`` (the one loader for
tests and benches) loads the repo root under that name by file, unless this checkout is installed.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

sys.path.insert(0, str(REPO / "tools"))
try:
    from package_loader import load_wan_accel
finally:
    sys.path.remove(str(REPO / "tools"))

load_wan_accel()


def comfyui_path() -> Path | None:
    value = os.environ.get("COMFYUI_PATH")
    return Path(value).resolve() if value else None


@pytest.fixture(scope="session")
def comfyui():
    """A ComfyUI checkout on sys.path, or a skip that says how to get one."""
    path = comfyui_path()
    if path is None:
        pytest.skip("integration test: set COMFYUI_PATH to a ComfyUI checkout (0.3.64 or 0.8.0) to run it")
    if not (path / "comfy").is_dir():
        pytest.fail(f"COMFYUI_PATH={path} is not a ComfyUI checkout (no comfy/ folder)")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    # ComfyUI's modules read their launch flags on import; tests run it on the CPU.
    from comfy.cli_args import args

    args.cpu = True
    return path
