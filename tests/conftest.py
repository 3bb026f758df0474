"""Test session set-up.

* The package is imported the way ComfyUI imports ``custom_nodes/<folder>``: by file, under a name
  (``wan_accel``), never by putting the repo root on ``sys.path`` (``tools/package_loader.py``).
* The test dependencies (the ``test`` extra) must all be installed: a missing one fails the session at
  once instead of skipping tests one by one.
* ``COMFYUI_PATH`` points the integration tests at a ComfyUI checkout (fixture ``comfyui``).
* Everything the tests and the processes they start write to the temporary folder goes into one folder
  per session; whatever a test leaves there fails the session, then the folder is removed.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

sys.path.insert(0, str(REPO / "tools"))
try:
    from package_loader import load_wan_accel
finally:
    sys.path.remove(str(REPO / "tools"))

load_wan_accel()

# The `test` extra of pyproject.toml as {import name: distribution}; tests/test_packaging.py keeps the two equal.
TEST_DEPENDENCIES = {"pytest": "pytest", "hypothesis": "hypothesis", "diffusers": "diffusers", "tqdm": "tqdm",
                     "websocket": "websocket-client", "packaging": "packaging"}


def _user() -> str:
    import getpass
    import re

    try:
        return re.sub(r'[\\/:*?"<>|]', "_", getpass.getuser())  # as torch names its default cache folder
    except (KeyError, OSError):
        return "unknown"


def missing_test_dependencies() -> list[str]:
    return [dist for module, dist in TEST_DEPENDENCIES.items() if importlib.util.find_spec(module) is None]


# Before anything asks for the temporary folder: subprocesses (ComfyUI, chromium) inherit TMPDIR.
# torch's compile cache stays where it was (it is a cache, kept between sessions, not a test's leftover).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"torchinductor_{_user()}"))
SESSION_TMP = Path(tempfile.mkdtemp(prefix="wan_accel_tests_"))
os.environ["TMPDIR"] = str(SESSION_TMP)
tempfile.tempdir = str(SESSION_TMP)
# pytest's own tmp_path folders live in SESSION_TMP too and go with it
PYTEST_TMP_PREFIX = "pytest-of-"


def pytest_sessionstart(session):
    missing = missing_test_dependencies()
    if missing:
        shutil.rmtree(SESSION_TMP, ignore_errors=True)  # pytest skips sessionfinish after an exit here
        pytest.exit(f"test dependencies missing from {sys.executable}: {', '.join(missing)} "
                    f"(install them: pip install -e '{REPO}[test]')", returncode=pytest.ExitCode.USAGE_ERROR)


def leftover_temp_files(folder: Path = SESSION_TMP) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(PYTEST_TMP_PREFIX))


def pytest_sessionfinish(session, exitstatus):
    if not SESSION_TMP.is_dir():
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")

    def say(line: str, **markup) -> None:
        if reporter is not None:
            reporter.write_line(line, **markup)
        else:
            print(line, file=sys.stderr)

    leftovers = leftover_temp_files()
    keep = bool(os.environ.get("WAN_ACCEL_E2E_KEEP"))
    if leftovers and not keep:
        say(f"ERROR: tests left files in the temporary folder {SESSION_TMP}: {', '.join(leftovers)}", red=True)
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if leftovers or keep:
        say(f"temporary folder kept: {SESSION_TMP}")
    else:
        shutil.rmtree(SESSION_TMP, ignore_errors=True)


ONLY_COMFYUI_ENV = "WAN_ACCEL_TESTS_ONLY_COMFYUI"


def pytest_collection_modifyitems(config, items):
    # CI (.ci/junit_counts.py) holds these to running, not skipping, when it runs against ComfyUI
    for item in items:
        if "comfyui" in getattr(item, "fixturenames", ()):
            item.user_properties.append(("uses_comfyui", "yes"))
    # CI's ComfyUI suites: the engine tests import no ComfyUI and already ran in its plain suite
    if os.environ.get(ONLY_COMFYUI_ENV) == "1":
        keep = [i for i in items if "comfyui" in getattr(i, "fixturenames", ())]
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


def comfyui_path() -> Path | None:
    value = os.environ.get("COMFYUI_PATH")
    return Path(value).resolve() if value else None


@pytest.fixture(scope="session")
def comfyui():
    """A ComfyUI checkout on sys.path, or a skip that says how to get one."""
    path = comfyui_path()
    if path is None:
        pytest.skip("integration test: set COMFYUI_PATH to a ComfyUI checkout (0.3.64, 0.8.0 or 0.33.0) to run it")
    if not (path / "comfy").is_dir():
        pytest.fail(f"COMFYUI_PATH={path} is not a ComfyUI checkout (no comfy/ folder)")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    # ComfyUI's modules read their launch flags on import; tests run it on the CPU.
    from comfy.cli_args import args

    args.cpu = True
    return path


@pytest.fixture(scope="module")
def mappings(comfyui):
    """Our nodes as ComfyUI loads them (NODE_CLASS_MAPPINGS), for the ComfyUI VAE tests."""
    from comfy_support import load_our_nodes

    return load_our_nodes()


@pytest.fixture(scope="module")
def vae21(comfyui):
    """A ComfyUI VAE with random Wan 2.1 weights under the real key names."""
    from comfy_support import comfy_vae, random_wan_vae_sd

    return comfy_vae(random_wan_vae_sd("2.1"))
