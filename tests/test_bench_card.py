"""Card emulation (bench/card.py): how much the holder allocates, what ComfyUI's process is told about the
device, the peak sampler. The holder itself needs a GPU (docs/benchmarks.md has the measured check)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench_support import load_bench

GIB, MIB = 2**30, 2**20


@pytest.fixture(scope="module")
def card():
    return load_bench("card")


def test_filler_leaves_exactly_the_target_free_in_driver_sized_chunks(card):
    free = 139 * GIB + 123 * MIB + 5
    sizes = card.filler_plan(free, 16 * GIB, chunk=2 * GIB)
    assert free - sum(sizes) - 16 * GIB < 2 * MIB  # only the sub-2-MiB rest stays
    assert all(s % (2 * MIB) == 0 and 0 < s <= 2 * GIB for s in sizes)
    assert card.filler_plan(12 * GIB, 16 * GIB) == [] and card.filler_plan(16 * GIB, 16 * GIB) == []


def test_process_sees_the_card_total_and_the_real_free_memory(card):
    real = lambda device=None: (20 * GIB, 141 * GIB)  # noqa: E731
    fn = card.card_mem_get_info(real, 16 * GIB)
    assert fn(0) == (16 * GIB, 16 * GIB)  # before the holder fills, free is capped at the card's size
    real_after = lambda device=None: (15 * GIB, 141 * GIB)  # noqa: E731
    assert card.card_mem_get_info(real_after, 16 * GIB)(0) == (15 * GIB, 16 * GIB)


def test_report_total_patches_what_comfyui_calls_and_keeps_the_real_function(card, monkeypatch):
    import torch
    import torch.cuda.memory as memory

    real = lambda device=None: (100 * GIB, 141 * GIB)  # noqa: E731
    monkeypatch.setattr(torch.cuda, "mem_get_info", real)
    monkeypatch.setattr(memory, "mem_get_info", real)
    card.report_total(torch, 24 * GIB)
    assert torch.cuda.mem_get_info(0) == (24 * GIB, 24 * GIB) and memory.mem_get_info is torch.cuda.mem_get_info
    card.report_total(torch, 12 * GIB)  # again: wraps the real function, not the last wrapper
    assert torch.cuda.mem_get_info(0) == (12 * GIB, 12 * GIB)
    assert card.real_mem_get_info(torch) is real


def test_no_card_without_a_size_or_without_cuda(card):
    roomy = card.Card(0).start(cuda=True)
    assert roomy.holder is None and roomy.total_bytes is None and not roomy.describe()["emulated"]
    cpu = card.Card(16).start(cuda=False)
    assert cpu.holder is None and cpu.total_bytes == 16 * GIB and not cpu.describe()["emulated"]


def test_sampler_reports_the_lowest_free_memory_it_saw_as_peak_use(card):
    readings = iter([10 * GIB, 8 * GIB, 3 * GIB] + [9 * GIB] * 10_000)
    fake = SimpleNamespace(cuda=SimpleNamespace(mem_get_info=lambda device=None: (next(readings), 141 * GIB)))
    sampler = card.DeviceMemorySampler(fake, interval=0.0001)
    with sampler:
        while sampler.min_free > 3 * GIB:
            pass
    assert sampler.peak_used_gib(card.Card(16)) == 13.0  # 16 GiB card, 3 GiB free at the lowest
    assert sampler.peak_used_gib(card.Card(0)) == 138.0  # the whole device


@pytest.mark.parametrize("name", ["two_pass", "vae_after_sampler", "server_memory"])
def test_every_gpu_bench_takes_the_card_size(card, name):
    module = load_bench(name)
    opts = module.parse_args(["--comfy", "c", "--out", "o", "--vram-gb", "16"])
    assert opts.vram_gb == 16.0 and card.Card(opts.vram_gb).total_bytes == 16 * GIB


def test_launch_command_wraps_the_server_only_on_an_emulated_card(card):
    import sys

    assert card.launch_command(None, "main.py", ["--cpu"]) == [sys.executable, "main.py", "--cpu"]
    cmd = card.launch_command(16 * GIB, "main.py", ["--port", "1"])
    assert cmd[1].endswith("card.py") and cmd[2:] == ["launch", str(16 * GIB), "main.py", "--port", "1"]
