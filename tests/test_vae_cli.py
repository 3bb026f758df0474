"""``python -m wan_accel`` in a subprocess, as people and CI run it: a plan that really tiles by default,
and every bad input answered with one line that names the fix (exit status 2), no traceback unless --debug."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers", reason="the command's default VAE needs diffusers (pip install .[demo])")

REPO = Path(__file__).resolve().parent.parent


def run_cli(tmp_path: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """The command as pip installs it: a package named wan_accel, here a link to this repo."""
    link = tmp_path / "site" / "wan_accel"
    if not link.exists():
        link.parent.mkdir(parents=True)
        link.symlink_to(REPO, target_is_directory=True)
    env = dict(os.environ, PYTHONPATH=str(link.parent), CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-m", "wan_accel", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_default_run_tiles_slices_and_matches_the_untiled_decode(tmp_path):
    done = run_cli(tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    plan = next(line for line in done.stdout.splitlines() if line.startswith("plan: "))
    assert plan.startswith("plan: 2 tiles of at most 64x64 px, 2 slices"), plan
    report = json.loads(done.stdout[done.stdout.index("{"):])
    assert (report["frames"], report["height"], report["width"]) == (5, 64, 128)
    assert report["max_abs_diff_vs_untiled"] <= 1e-4


BAD_INPUTS = [
    (["--tile", "-5"], "--tile -5 is out of range"),  # once: exit 0 and an all-grey video
    (["--tile", "1"], "--tile 1 px is below the smallest tile"),  # once: minutes of halo
    (["--tile", "abc"], "argument --tile: invalid int value"),
    (["--max-vram-gb", "-3"], "--max-vram-gb -3 is out of range"),  # once: accepted
    (["--max-vram-gb", "nan"], "--max-vram-gb is NaN"),
    (["--slice", "0.5"], "argument --slice: invalid int value"),
    (["--slice", "65"], "--slice 65 is out of range"),
    (["--frames", "6"], "--frames 6: Wan video has 1 + 4k frames"),
    (["--size", "100x100"], "--size 100x100: both sides must be multiples of 8"),
    (["--size", "big"], "--size 'big': give HEIGHTxWIDTH"),
    (["--device", "cuda"], "this PyTorch sees no CUDA GPU; use --device cpu"),
    (["--vae", "missing.safetensors"], "--vae missing.safetensors: no such file"),
    (["--out", "no/such/folder/x.pt"], "its folder does not exist"),
    (["--bogus"], "unrecognized arguments: --bogus"),
]


def _one_line_usage_error(returncode: int, stdout: str, stderr: str, message: str) -> None:
    assert returncode == 2, (returncode, stderr[-2000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m wan_accel: error: ") and message in lines[0], lines
    assert stdout == ""


@pytest.mark.parametrize("args, message", BAD_INPUTS[:2] + BAD_INPUTS[3:5])
def test_bad_input_gets_one_line_naming_the_fix(tmp_path, args, message):
    done = run_cli(tmp_path, *args, timeout=300)
    _one_line_usage_error(done.returncode, done.stdout, done.stderr, message)


@pytest.mark.parametrize("args, message", BAD_INPUTS)
def test_every_option_is_range_checked(tmp_path, monkeypatch, capsys, args, message):
    """The same checks in-process (each subprocess pays seconds of torch import)."""
    from wan_accel.vae_accel.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    code = main(args)
    out = capsys.readouterr()
    _one_line_usage_error(code, out.out, out.err, message)


def test_bad_latent_file_and_debug_traceback(tmp_path):
    bad = tmp_path / "x.latent"
    bad.write_bytes(b"not a safetensors file")
    quiet = run_cli(tmp_path, "--latent", str(bad), timeout=300)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert len(quiet.stderr.strip().splitlines()) == 1 and "not a .latent (safetensors) file" in quiet.stderr
    loud = run_cli(tmp_path, "--latent", str(bad), "--debug", timeout=300)
    assert loud.returncode == 2 and "Traceback" in loud.stderr
    assert loud.stderr.strip().splitlines()[-1].startswith("python -m wan_accel: error: --latent")


def test_latent_with_the_wrong_channels_is_a_usage_error(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "image.latent"
    save_file({"latent_tensor": torch.zeros(1, 4, 8, 8), "latent_format_version_0": torch.tensor([])}, str(path))
    done = run_cli(tmp_path, "--latent", str(path), timeout=300)
    assert done.returncode == 2 and "got a 4-D latent" in done.stderr and "Traceback" not in done.stderr
