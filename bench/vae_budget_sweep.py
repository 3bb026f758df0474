"""How the engine's speed follows its VRAM budget, warm, against ComfyUI's ``VAE.decode`` / ``VAE.encode``.

The planner picks the largest tiles and slices the budget allows; smaller tiles recompute more halo.
This sweep is what the default budgets (``vae_accel.runtime``) are set from. Writes JSON.

    python bench/vae_budget_sweep.py --comfy /path/to/ComfyUI --out bench/results/vae_budget_sweep.json
"""
from __future__ import annotations

import argparse

import torch

from _common import timed, vae_bench_start, write_json
from vae_decode import comfy_wan21
from vae_encode import i2v_video


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--comfy", required=True)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--size", default="1216x832")
    p.add_argument("--budgets", default="2,3,4,6,8,12,16", help="GiB")
    p.add_argument("--out", default="bench/results/vae_budget_sweep.json")
    a = p.parse_args()
    dev, H, W, res = vae_bench_start(a)
    import comfy.sd
    from wan_accel.vae_accel import build_decoder, build_encoder, decode, encode
    from wan_accel.vae_accel.planner import plan_decode, plan_encode

    h, w, T = H // 8, W // 8, (a.frames - 1) // 4 + 1
    vae = comfy.sd.VAE(sd=comfy_wan21(96).state_dict())
    m = vae.first_stage_model
    dec, enc = build_decoder(m), build_encoder(m)
    video = i2v_video(a.frames, H, W)
    z = torch.randn(1, 16, T, h, w)
    res.update(frames=a.frames, size=a.size, vae_dtype=str(vae.vae_dtype), encode={}, decode={})

    vae.encode(video[:5])  # loads the weights, warms cuDNN at this size
    vae.decode(z[:, :, :2])
    _, res["encode"]["native_VAE.encode"] = timed(dev, lambda: vae.encode(video))
    _, res["decode"]["native_VAE.decode"] = timed(dev, lambda: vae.decode(z))
    print(res, flush=True)
    for gib in (float(v) for v in a.budgets.split(",")):
        budget = int(gib * 2**30)
        kw = dict(budget_bytes=budget, progress=False, device=dev, dtype=vae.vae_dtype)
        pe = plan_encode(enc.down, (h, w), T, 2, budget, enc.space_factor, enc.time_factor)
        encode(m, video[None, :5], layout="comfy", **kw)  # warm this plan's tile shapes
        _, row = timed(dev, lambda: encode(m, video[None], layout="comfy", **kw))
        row["plan"] = {"tile": [pe.tile_h, pe.tile_w], "slice": pe.slice_len, "tiles": len(pe.tiles((h, w)))}
        res["encode"][f"ours_{gib:g}gib"] = row
        pd = plan_decode(dec.up, (h, w), T, 2, budget)
        decode(m, z[:, :, :2], **kw)
        _, row = timed(dev, lambda: decode(m, z, **kw))
        row["plan"] = {"tile": [pd.tile_h, pd.tile_w], "slice": pd.slice_len, "tiles": len(pd.tiles((h, w)))}
        res["decode"][f"ours_{gib:g}gib"] = row
        print(gib, res["encode"][f"ours_{gib:g}gib"], res["decode"][f"ours_{gib:g}gib"], flush=True)
    for kind, anchor in (("encode", "native_VAE.encode"), ("decode", "native_VAE.decode")):
        base = res[kind][anchor].get("s")
        for k, row in res[kind].items():
            if k != anchor and base and row.get("s"):
                row["speedup_vs_native"] = round(base / row["s"], 3)
    write_json(a.out, res)


if __name__ == "__main__":
    with torch.inference_mode():
        main()
