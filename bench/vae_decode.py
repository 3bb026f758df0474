"""Wan VAE decode: our engine against ComfyUI's native ``VAE.decode`` and ``VAE.decode_tiled``.

Full-size Wan 2.1 VAE (dim 96) with random weights in bf16 at 81 and 161 frames of 1216x832
(and the Wan 2.2 VAE at 1280x704): seconds of each configuration's first call in the process (``s``) and
best of ``--warm`` calls after it (``warm_s``), peak VRAM, error against an fp32 reference decode, ratios
against the anchors measured in the same run. Writes JSON.

    python bench/vae_decode.py --comfy /path/to/ComfyUI --out bench/results/vae_decode.json
"""
from __future__ import annotations

import torch

from _common import error_stats, randomise_, speedups, timed, vae_bench_args, vae_bench_start, write_json


def comfy_wan21(dim: int):
    import comfy.ldm.wan.vae as wv

    m = wv.WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                  temperal_downsample=[False, True, True])
    return randomise_(m)


def comfy_wan22():
    import comfy.ldm.wan.vae2_2 as wv

    m = wv.WanVAE(dim=160, dec_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                  temperal_downsample=[False, True, True])
    return randomise_(m)


def to01(x_raw_bcthw: torch.Tensor) -> torch.Tensor:
    return ((x_raw_bcthw.float().clamp(-1, 1) + 1) / 2).movedim(1, -1)  # B, T, H, W, C


def main() -> None:
    p = vae_bench_args(__doc__, "bench/results/vae_decode.json")
    p.add_argument("--sweep", action="store_true", help="also time tile/slice/option variants")
    a = p.parse_args()
    dev, H, W, res = vae_bench_start(a)
    from wan_accel.vae_accel import decode
    import comfy.sd
    res["runs"] = []
    model = comfy_wan21(96)
    sd = model.state_dict()
    vae = comfy.sd.VAE(sd=sd)  # ComfyUI's wrapper, bf16 on the GPU: the anchor
    res["comfy_vae_dtype"] = str(vae.vae_dtype)
    bf16 = vae.first_stage_model
    fp32 = comfy_wan21(96).to(dev)

    # warm-up (cuDNN autotune, our fused kernels) on a small latent
    zw = torch.randn(1, 16, 3, 32, 32)
    vae.decode(zw)  # also moves the weights to the GPU
    decode(bf16, zw, layout="comfy", progress=False)

    for F in a.frames:
        T = (F - 1) // 4 + 1
        z = torch.randn(1, 16, T, H // 8, W // 8, generator=torch.Generator().manual_seed(F))
        row = {"frames": F, "latent": list(z.shape)}
        if F == a.frames[0]:
            with torch.inference_mode():
                ref = to01(fp32.decode(z.to(dev)).cpu())
            row["reference"] = "native fp32 module decode"
        else:  # the native fp32 decode's memory grows with frames; ours in fp32 is exact (see ours_fp32_vs_fp32)
            ref = decode(fp32, z, layout="comfy", budget_bytes=8 * 2**30, progress=False)
            row["reference"] = "our fp32 decode"
        torch.cuda.empty_cache()

        def record(name, fn):
            out, row[name] = timed(dev, fn, warm=a.warm)
            if out is not None:
                row[name].update({k: round(v, 5) for k, v in error_stats(out.reshape(ref.shape), ref).items()})
            print(F, name, row[name], flush=True)

        record("native_module.decode", lambda: to01(bf16.decode(z.to(dev, torch.bfloat16)).cpu()))
        record("native_VAE.decode", lambda: vae.decode(z))
        record("comfy_decode_tiled_512_64_64_8", lambda: vae.decode_tiled(z, tile_x=64, tile_y=64, overlap=8, tile_t=64, overlap_t=8))
        record("ours_default", lambda: decode(bf16, z, layout="comfy", progress=False))
        record("ours_2gib", lambda: decode(bf16, z, layout="comfy", budget_bytes=2 * 2**30, progress=False))
        from wan_accel.vae_accel.planner import plan_decode
        from wan_accel.vae_accel import build_decoder
        from wan_accel.vae_accel.runtime import default_budget
        for name, budget in (("ours_default", default_budget(dev)), ("ours_2gib", 2 * 2**30)):
            plan = plan_decode(build_decoder(bf16).up, (H // 8, W // 8), T, 2, budget)
            row[name]["plan"] = {"tile": [plan.tile_h, plan.tile_w], "slice": plan.slice_len,
                                 "est_gib": round(plan.est_bytes / 2**30, 3)}
        if a.sweep and F == a.frames[0]:
            for tile in (None, 76, 38):
                for k in (1, 2, 4):
                    record(f"ours_tile{tile}_slice{k}", lambda: decode(bf16, z, layout="comfy", tile=tile, slice_len=k, progress=False))
            record("ours_no_channels_last", lambda: decode(bf16, z, layout="comfy", budget_bytes=2 * 2**30, channels_last=False, progress=False))
            record("ours_no_fused_norm", lambda: decode(bf16, z, layout="comfy", budget_bytes=2 * 2**30, fused_norm=False, progress=False))
            record("ours_fp32_vs_fp32", lambda: decode(fp32, z, layout="comfy", budget_bytes=4 * 2**30, progress=False))
        for k in ("ours_default", "ours_2gib"):
            speedups(row, k, ("native_module.decode", "native_VAE.decode", "comfy_decode_tiled_512_64_64_8"))
        res["runs"].append(row)
        del ref
        torch.cuda.empty_cache()

    if a.wan22:
        m22 = comfy_wan22()
        vae22 = comfy.sd.VAE(sd=m22.state_dict())
        f22 = m22.to(dev)
        z = torch.randn(1, 48, 21, 704 // 16, 1280 // 16)
        with torch.inference_mode():
            ref = to01(f22.decode(z.to(dev)).cpu())
        row = {"frames": 81, "vae": "wan2.2", "size": "1280x704"}
        for name, fn in [("native_VAE.decode", lambda: vae22.decode(z)),
                         ("ours_default", lambda: decode(vae22.first_stage_model, z, layout="comfy", progress=False)),
                         ("ours_2gib", lambda: decode(vae22.first_stage_model, z, layout="comfy", budget_bytes=2 * 2**30, progress=False))]:
            out, row[name] = timed(dev, fn, warm=a.warm)
            if out is not None:
                row[name].update(error_stats(out.reshape(ref.shape), ref))
            print(name, row[name], flush=True)
        for k in ("ours_default", "ours_2gib"):
            speedups(row, k, ("native_VAE.decode",))
        res["wan22"] = row
    write_json(a.out, res)


if __name__ == "__main__":
    with torch.inference_mode():  # as ComfyUI runs nodes; autograd would keep every activation
        main()
