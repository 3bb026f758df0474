"""Import a checkout of this repository as the package ``wan_accel``, the way ComfyUI imports a custom
node folder: by its ``__init__.py`` under a chosen name, never by putting the repository root on ``sys.path``
(ComfyUI has its own top-level ``nodes`` module, which our ``nodes/`` would shadow).

The one loader for tests (``tests/conftest.py``, the schema subprocess of ``tests/test_workflows.py``) and
benches. It lives outside the package so that it can load the package. Use it as::

    sys.path.insert(0, str(REPO / "tools"))
    from package_loader import load_wan_accel
    wan_accel = load_wan_accel()
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NAME = "wan_accel"


def _origin(spec) -> Path | None:
    return Path(spec.origin).resolve() if spec is not None and spec.origin else None


def load_wan_accel(repo: Path = REPO, name: str = NAME):
    """The package from ``repo`` as module ``name``: the one already imported or installed (pip's editable
    install) when it is this checkout, else loaded from ``repo/__init__.py``.

    Raises ``ImportError`` when ``name`` is already imported from another folder: code that ran earlier
    holds that copy, and tests must test the checkout they run in.
    """
    init = (Path(repo) / "__init__.py").resolve()
    loaded = sys.modules.get(name)
    if loaded is not None:
        where = Path(loaded.__file__).resolve() if getattr(loaded, "__file__", None) else None
        if where != init:
            raise ImportError(f"{name} is already imported from {where}, not from {init}")
        return loaded
    try:
        installed = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        installed = None
    if _origin(installed) == init:
        return importlib.import_module(name)
    # Not installed, or installed from another copy: this checkout wins, as it would in custom_nodes/.
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


if __name__ == "__main__":  # a quick look: which copy would load
    print(load_wan_accel().__file__)
