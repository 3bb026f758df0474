"""The test harness itself: a missing test dependency or a leftover temporary file fails the session
(tests/conftest.py), and the real-server helper runs ComfyUI on a base directory of its own with this
package linked in, no hand-made link, and leaves nothing behind (tests/comfy_support.py)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from comfy_support import PACKAGE_FOLDER, comfy_server

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def run_pytest(tmp_path: Path, test_source: str, before: str = "", args=()) -> subprocess.CompletedProcess:
    """pytest in a subprocess on one test file, with this conftest as a plugin, without COMFYUI_PATH;
    ``before`` runs first."""
    (tmp_path / "test_probe.py").write_text(test_source)
    code = (f"{before}\nimport sys, pytest\n"
            f"sys.exit(pytest.main(['-q', '-p', 'conftest', '-p', 'no:cacheprovider', '--rootdir', {str(tmp_path)!r}, "
            f"*{list(args)!r}, {str(tmp_path / 'test_probe.py')!r}]))")
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    env.pop("WAN_ACCEL_E2E_KEEP", None)
    env.pop("COMFYUI_PATH", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)


def test_a_missing_test_dependency_fails_the_session(tmp_path):
    before = set(Path(tempfile.gettempdir()).iterdir())
    res = run_pytest(tmp_path, "def test_nothing():\n    pass\n", before="import sys; sys.modules['websocket'] = None")
    out = res.stdout + res.stderr
    assert res.returncode == 4, out
    assert "websocket-client" in out and "pip install" in out, out
    assert set(Path(tempfile.gettempdir()).iterdir()) == before, "its session folder is removed"


def test_a_leftover_temporary_file_fails_the_session(tmp_path):
    res = run_pytest(tmp_path, "import tempfile\n\ndef test_leaks():\n    tempfile.mkdtemp(prefix='wan_accel_leak_')\n")
    out = res.stdout + res.stderr
    kept = re.search(r"temporary folder kept: (\S+)", out)
    if kept:
        shutil.rmtree(kept.group(1), ignore_errors=True)
    assert res.returncode == 1 and "tests left files" in out and "wan_accel_leak_" in out, out
    assert kept, out


def test_a_clean_session_passes_and_removes_its_folder(tmp_path):
    before = set(Path(tempfile.gettempdir()).iterdir())
    res = run_pytest(tmp_path, "import tempfile, shutil\n\ndef test_cleans(tmp_path):\n"
                               "    shutil.rmtree(tempfile.mkdtemp(prefix='wan_accel_x_'))\n")
    assert res.returncode == 0, res.stdout + res.stderr
    assert set(Path(tempfile.gettempdir()).iterdir()) == before


def junit_counts(xml: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / ".ci" / "junit_counts.py"), str(xml), *args],
                          capture_output=True, text=True, timeout=60)


def test_ci_fails_a_comfyui_suite_whose_integration_tests_skip(tmp_path):
    """.ci/run's counts: an integration test (one using the comfyui fixture) that skips fails a ComfyUI
    suite unless the reason names chromium; other skips (GPU-only tests) are only counted."""
    res = run_pytest(tmp_path, "import pytest\n\n"
                               "def test_integration(comfyui):\n    pass\n\n"
                               "def test_gpu_only():\n    pytest.skip('needs CUDA')\n\n"
                               "def test_engine():\n    pass\n",
                     args=["--junitxml", str(tmp_path / "r.xml")])
    assert res.returncode == 0, res.stdout + res.stderr
    plain = junit_counts(tmp_path / "r.xml")
    assert plain.returncode == 0 and plain.stdout.startswith("1 passed, 0 failed, 0 errors, 2 skipped"), plain.stdout
    suite = junit_counts(tmp_path / "r.xml", "--comfyui", "chromium")
    assert suite.returncode == 1, suite.stdout
    assert "test_integration" in suite.stdout and "COMFYUI_PATH" in suite.stdout and "test_gpu_only" not in suite.stdout
    xml = (tmp_path / "r.xml").read_text()
    (tmp_path / "c.xml").write_text(xml.replace("set COMFYUI_PATH", "install Debian's chromium; set COMFYUI_PATH"))
    only_browser = junit_counts(tmp_path / "c.xml", "--comfyui", "chromium")
    assert only_browser.returncode == 1 and "0 integration tests passed" in only_browser.stdout, only_browser.stdout
    assert junit_counts(tmp_path / "missing.xml").returncode == 1


def test_ci_counts_a_feature_this_comfyui_lacks_as_a_skip_not_a_failure(tmp_path):
    """An integration test that detects the release under test lacks what it checks ("this ComfyUI ...")
    is counted; the same test skipped for any other reason fails the suite."""
    def suite(reason: str) -> subprocess.CompletedProcess:
        case = '<testcase classname="t" name="{n}"><properties><property name="uses_comfyui" value="yes"/>' \
               "</properties>{body}</testcase>"
        xml = tmp_path / "r.xml"
        xml.write_text("<testsuites><testsuite>" + case.format(n="ran", body="") +
                       case.format(n="feature", body=f'<skipped message="{reason}"/>') + "</testsuite></testsuites>")
        return junit_counts(xml, "--comfyui", "chromium")

    ok = suite("this ComfyUI's VAE.encode has no format_encoded step")
    assert ok.returncode == 0 and ok.stdout.startswith("1 passed, 0 failed, 0 errors, 1 skipped"), ok.stdout
    assert suite("no reason given").returncode == 1


def test_server_loads_the_package_from_its_own_base_directory(comfyui):
    """``main.py --cpu`` with a temporary base directory: the package loads from its custom_nodes/ link
    with no error in the log, ComfyUI's checkout is not written to, the folder goes afterwards."""
    def tree(root: Path) -> dict:
        return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if "__pycache__" not in p.parts}

    checkout = tree(comfyui)
    with comfy_server(comfyui) as srv:
        work, proc = srv["work"], srv["proc"]
        assert (work / "custom_nodes" / PACKAGE_FOLDER).resolve() == REPO
        with urllib.request.urlopen(srv["base"] + "/object_info", timeout=30) as res:
            info = json.loads(res.read())
        assert {"WanAccelVAEPatch", "WanAccelVAEDecode", "WanAccelVAEEncode", "WanAccelAttention"} <= set(info)
        log = (work / "server.log").read_text()
    assert proc.poll() is not None
    assert not work.exists()
    assert "wan_accel telemetry on" in log, log[-3000:]
    errors = [line for line in log.splitlines()
              if re.search(r"IMPORT FAILED|Traceback|\[ERROR\]|Failed to|setup failed|Cannot import", line)]
    assert not errors, "\n".join(errors)
    assert tree(comfyui) == checkout, "the server wrote into the ComfyUI checkout"


def test_ci_comfyui_suites_keep_only_the_tests_that_use_comfyui():
    """CI's ComfyUI suites (WAN_ACCEL_TESTS_ONLY_COMFYUI=1) deselect the engine tests, which ran in its plain suite."""
    def collected(only: str) -> set[str]:
        env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"} | {"WAN_ACCEL_TESTS_ONLY_COMFYUI": only}
        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                              "tests/test_vae_planner.py", "tests/test_vae_nodes.py"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=300).stdout
        return {line.split("::")[0] for line in out.splitlines() if "::" in line}

    assert collected("0") == {"tests/test_vae_planner.py", "tests/test_vae_nodes.py"}
    assert collected("1") == {"tests/test_vae_nodes.py"}


def test_stopping_a_browser_stops_its_whole_process_group_before_its_profile_goes(tmp_path):
    """chromium's helpers outlive the browser process for a moment and write into the profile; the browser
    helper must stop the whole group, then remove the profile, or the session fails on a leftover folder."""
    import signal
    import time

    from comfy_support import remove_tree, stop_process_group

    profile = tmp_path / "profile"
    profile.mkdir()
    # a 'browser' whose helper ignores nothing but outlives it, writing into the profile every 50 ms
    script = (f"(trap '' TERM; while true; do touch {profile}/helper_$$_$RANDOM; sleep 0.05; done) & "
              "exec sleep 60")
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    deadline = time.time() + 10  # the helper has started writing (slow to start on a loaded CI machine)
    while not any(profile.iterdir()) and time.time() < deadline:
        time.sleep(0.05)
    assert any(profile.iterdir())
    stop_process_group(proc, timeout=1)
    try:
        os.killpg(proc.pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    if alive:  # leave nothing running whatever the assertion says
        os.killpg(proc.pid, signal.SIGKILL)
    assert not alive, "a process of the browser's group outlived stop_process_group"
    remove_tree(profile)
    time.sleep(0.2)
    assert not profile.exists()
