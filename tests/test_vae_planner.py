"""Planner properties: its tiles partition the image, its plan fits the budget when any plan can."""
from __future__ import annotations

import math

import pytest
import torch

from hypothesis import given, settings
from hypothesis import strategies as st

from wan_accel.vae_accel import build_decoder, plan_decode
from wan_accel.vae_accel.planner import estimate_bytes, grid
from wan_accel.vae_accel.runtime import default_budget

from wan_fixtures import wan21

UP = build_decoder(wan21()).up


@settings(deadline=None)
@given(st.integers(1, 200), st.integers(1, 200), st.integers(1, 64), st.integers(1, 64))
def test_grid_partitions_the_image(H, W, th, tw):
    tiles = grid((H, W), th, tw)
    covered = [[0] * W for _ in range(H)]
    for r in tiles:
        assert 0 < r.height <= th and 0 < r.width <= tw
        for y in range(r.y0, r.y1):
            for x in range(r.x0, r.x1):
                covered[y][x] += 1
    assert all(c == 1 for row in covered for c in row)


@settings(max_examples=60, deadline=None)
@given(st.integers(8, 200), st.integers(8, 200), st.integers(1, 41), st.floats(0.05, 64.0))
def test_plan_fits_budget_when_possible(H, W, T, budget_gib):
    budget = int(budget_gib * 2**30)
    plan = plan_decode(UP, (H, W), T, 2, budget)
    smallest = estimate_bytes(UP, min(8, H), min(8, W), 1, 2)  # the smallest candidate the planner has
    if smallest <= budget * 0.85:
        assert plan.est_bytes <= budget * 0.85, plan
        assert plan.reason == "fits"
    assert 1 <= plan.slice_len <= max(1, T - 1) or T == 1
    assert plan.tile_h <= H and plan.tile_w <= W


@settings(max_examples=30, deadline=None)
@given(st.integers(8, 200), st.integers(8, 200), st.integers(2, 41))
def test_more_budget_never_means_more_steps(H, W, T):
    def steps(plan):
        return len(grid((H, W), plan.tile_h, plan.tile_w)) * math.ceil((T - 1) / plan.slice_len)

    small = plan_decode(UP, (H, W), T, 2, 1 * 2**30)
    big = plan_decode(UP, (H, W), T, 2, 64 * 2**30)
    assert steps(big) <= steps(small)


@settings(deadline=None)
@given(st.integers(1, 64), st.integers(1, 8))
def test_estimate_grows_with_tile_and_slice(tile, k):
    assert estimate_bytes(UP, tile + 1, tile, k, 2) > estimate_bytes(UP, tile, tile, k, 2)
    assert estimate_bytes(UP, tile, tile, k + 1, 2) > estimate_bytes(UP, tile, tile, k, 2)


def test_overrides_are_respected():
    plan = plan_decode(UP, (152, 104), 21, 2, 10 * 2**30, tile=32, slice_len=3)
    assert (plan.tile_h, plan.tile_w, plan.slice_len, plan.reason) == (32, 32, 3, "user override")
    plan = plan_decode(UP, (20, 20), 5, 2, None, tile=64)
    assert (plan.tile_h, plan.tile_w) == (20, 20)


def test_unlimited_budget_means_one_tile():
    plan = plan_decode(UP, (152, 104), 21, 2, None)
    assert (plan.tile_h, plan.tile_w) == (152, 104)


GIB = 2**30


@pytest.mark.parametrize("free_gib, decode_gib, encode_gib", [
    (70.0, 8.0, 8.0),    # an 80 GB card with two fp8 experts loaded: the caps
    (12.0, 6.0, 6.0),    # a 16 GB card after its sampler: half of what is free
    (5.0, 3.0, 2.5),     # tight: decode's floor, which keeps the low-VRAM plans; encode's half
    (3.0, 3.0, 2.0),     # tighter: the floors
    (1.5, 1.5, 1.5),     # tighter than the floor: never more than is free
])
def test_default_budget_is_a_share_of_free_memory_between_floor_and_cap(free_gib, decode_gib, encode_gib):
    cuda = torch.device("cuda")  # only the type is read when free memory is given
    free = int(free_gib * GIB)
    assert default_budget(cuda, free) == int(decode_gib * GIB)
    assert default_budget(cuda, free, kind="encode") == int(encode_gib * GIB)


def test_default_budget_is_unlimited_on_the_cpu():
    assert default_budget(torch.device("cpu")) is None


@pytest.mark.parametrize("kw", [dict(tile=0), dict(tile=-5), dict(slice_len=-1), dict(budget_bytes=-3 * 2**30)])
def test_planner_refuses_nonsense_instead_of_planning_it(kw):
    args = dict(budget_bytes=2**30) | kw
    with pytest.raises(ValueError, match="must be"):
        plan_decode(UP, (20, 20), 5, 2, args.pop("budget_bytes"), **args)


def test_wan22_decode_plans_with_its_own_measured_factor():
    """A Wan 2.2 decode plans at 0.9 of the Wan 2.1 factor (its peaks measured lower against the model):
    the plan the engine makes carries that estimate, and a Wan 2.1 decode keeps the plain factor."""
    from wan_fixtures import wan22

    from wan_accel.vae_accel import decode_plan
    from wan_accel.vae_accel.planner import DECODE_CALIBRATION, VERSION_SCALE

    assert VERSION_SCALE == {"2.2": 0.9}
    for model, shape, version in ((wan22(), (1, 48, 5, 12, 16), "2.2"), (wan21(), (1, 16, 5, 12, 16), "2.1")):
        budget = 64 * 2**20
        plan = decode_plan(model, shape, budget_bytes=budget)
        up = build_decoder(model).up
        plain = estimate_bytes(up, plan.tile_h, plan.tile_w, plan.slice_len, 4, calibration=DECODE_CALIBRATION)
        assert plan.est_bytes == pytest.approx(plain * VERSION_SCALE.get(version, 1.0), rel=1e-6, abs=1)
