"""Packaging: the test extra holds what the tests import, and every extra installs beside each supported
ComfyUI (its requirements.txt pins some of the same packages)."""
from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from conftest import TEST_DEPENDENCIES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
# imported by tests, provided by the runtime dependencies (pyproject's dependencies) under these names
RUNTIME_MODULES = {"torch": "torch", "numpy": "numpy", "einops": "einops", "safetensors": "safetensors", "psutil": "psutil"}
# ComfyUI's own modules, and what only tests that run with COMFYUI_PATH import from ComfyUI's requirements
COMFYUI_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "nodes", "folder_paths", "execution",
                   "server", "node_helpers", "latent_preview"}
COMFYUI_REQUIREMENTS = {"PIL": "pillow", "av": "av"}
# in the requirements of the releases that have Dynamic VRAM (0.33) only; the test importing it is GPU-only
COMFYUI_DYNAMIC_VRAM = {"comfy_aimdo": "comfy-aimdo"}
# installed with torch itself (its Linux x86-64 wheels depend on it); the tests that need it skip, with that
# reason, where torch came without it
TORCH_DEPENDENCIES = {"triton": "triton"}


def names(requirements) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def imported_modules(paths) -> set[str]:
    """Top-level names of every import in these files, also those inside functions and in source held in
    strings (the schema script, the test-only node)."""
    out = set()
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        embedded = [_parsed(n.value) for n in ast.walk(tree)
                    if isinstance(n, ast.Constant) and isinstance(n.value, str) and "import " in n.value]
        for t in [tree] + [e for e in embedded if e is not None]:
            for node in ast.walk(t):
                if isinstance(node, ast.Import):
                    out |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    out.add(node.module.split(".")[0])
    return out


def _parsed(text: str):
    try:
        return ast.parse(textwrap.dedent(text))
    except SyntaxError:
        return None


def test_runtime_and_test_names_match_pyproject():
    assert names(PYPROJECT["dependencies"]) == set(RUNTIME_MODULES.values())
    assert names(PYPROJECT["optional-dependencies"]["test"]) == {canonicalize_name(d) for d in TEST_DEPENDENCIES.values()}


def test_every_import_of_the_tests_is_installed_by_a_step():
    test_files = sorted((REPO / "tests").glob("*.py")) + sorted((REPO / "fixtures").glob("*.py")) + \
        sorted((REPO / "tools").glob("*.py"))
    local = {p.stem for p in test_files} | {"wan_accel", "__future__"}
    provided = (set(RUNTIME_MODULES) | set(TEST_DEPENDENCIES) | COMFYUI_MODULES | set(COMFYUI_REQUIREMENTS)
                | set(COMFYUI_DYNAMIC_VRAM) | set(TORCH_DEPENDENCIES))
    third_party = imported_modules(test_files) - set(sys.stdlib_module_names) - local
    assert third_party <= provided, f"imported by tests, installed by no step: {sorted(third_party - provided)}"


def test_import_scan_sees_imports_in_functions_and_strings(tmp_path):
    f = tmp_path / "t.py"
    f.write_text("def f():\n    import websocket.x\n    from PIL import Image\n"
                 "SRC = '''\nimport torch\nfrom foo.bar import baz\n'''\n")
    assert imported_modules([f]) == {"websocket", "PIL", "torch", "foo"}


def comfyui_requirements(comfyui: Path) -> dict[str, SpecifierSet]:
    out = {}
    for line in (comfyui / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            out[canonicalize_name(req.name)] = req.specifier
    return out


def conflicts(ours: SpecifierSet, theirs: SpecifierSet) -> bool:
    """No version satisfies both (tried: every version either names, just after it, and a far one)."""
    versions = {s.version for s in list(ours) + list(theirs)}
    candidates = versions | {v + ".post1" for v in versions} | {"99999"}
    return not any(ours.contains(v, prereleases=True) and theirs.contains(v, prereleases=True) for v in candidates)


def test_conflict_check():
    assert conflicts(SpecifierSet(">=0.2.40"), SpecifierSet("==0.2.31"))
    assert conflicts(SpecifierSet(">=3"), SpecifierSet("<2"))
    assert not conflicts(SpecifierSet(""), SpecifierSet("==0.2.31"))
    assert not conflicts(SpecifierSet(">=0.2.3"), SpecifierSet("==0.2.31"))
    assert not conflicts(SpecifierSet(">=1.6"), SpecifierSet(""))


def test_extras_install_beside_this_comfyui(comfyui):
    theirs = comfyui_requirements(comfyui)
    bad = []
    for extra, requirements in PYPROJECT["optional-dependencies"].items():
        for r in list(requirements) + list(PYPROJECT["dependencies"]):
            req = Requirement(r)
            pinned = theirs.get(canonicalize_name(req.name))
            if pinned is not None and conflicts(req.specifier, pinned):
                bad.append(f"[{extra}] {r} conflicts with {req.name}{pinned} in {comfyui / 'requirements.txt'}")
    assert not bad, "\n".join(bad)


def test_comfyui_provides_what_its_tests_import(comfyui):
    theirs = comfyui_requirements(comfyui)
    assert set(COMFYUI_REQUIREMENTS.values()) <= set(theirs), sorted(set(COMFYUI_REQUIREMENTS.values()) - set(theirs))
