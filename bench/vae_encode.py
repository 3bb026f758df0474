"""Wan VAE encode of the image-to-video conditioning video: ours vs ComfyUI's ``VAE.encode`` and
``VAE.encode_tiled`` (VAE Encode (Tiled) defaults). Start image + grey frames, as WanImageToVideo
builds it. Seconds (each configuration's first call in the process, ``s``, and the best of ``--warm``
calls after it, ``warm_s``), peak VRAM, relative error against an fp32 reference, ratios. Writes JSON.

    python bench/vae_encode.py --comfy /path/to/ComfyUI --out bench/results/vae_encode.json
"""
from __future__ import annotations

import torch

from _common import speedups, timed, vae_bench_args, vae_bench_start, write_json
from vae_decode import comfy_wan21, comfy_wan22


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.float().cpu(), ref.float().cpu()
    return ((a - ref).norm() / ref.norm()).item()


def i2v_video(frames: int, h: int, w: int) -> torch.Tensor:
    video = torch.full((frames, h, w, 3), 0.5)
    video[0] = torch.rand(h, w, 3, generator=torch.Generator().manual_seed(0))
    return video


def main() -> None:
    p = vae_bench_args(__doc__, "bench/results/vae_encode.json")
    a = p.parse_args()
    dev, H, W, res = vae_bench_start(a)
    import comfy.sd
    from wan_accel.vae_accel import encode
    res["runs"] = []

    def bench(name, fn, ref, row):
        out, row[name] = timed(dev, fn, warm=a.warm)
        if out is not None:
            row[name]["rel_err_vs_fp32"] = round(rel_err(out, ref), 5)
        print(row["frames"], name, row[name], flush=True)

    for version, (h, w) in [("2.1", (H, W))] + ([("2.2", (704, 1280))] if a.wan22 else []):
        model = comfy_wan21(96) if version == "2.1" else comfy_wan22()
        vae = comfy.sd.VAE(sd=model.state_dict())
        fp32 = model.to(dev)
        vae.encode(i2v_video(5, 64, 64))  # loads weights, warms cuDNN
        encode(vae.first_stage_model, i2v_video(5, 64, 64)[None], layout="comfy", progress=False)
        for F in a.frames if version == "2.1" else [81]:
            video = i2v_video(F, h, w)
            row = {"vae": version, "frames": F, "size": f"{w}x{h}"}
            if F == 81:
                ref = fp32.encode(video.permute(3, 0, 1, 2)[None].to(dev) * 2 - 1).float().cpu()
                row["reference"] = "native fp32 module encode"
            else:
                ref = encode(fp32, video[None], layout="comfy", budget_bytes=8 * 2**30, progress=False)
                row["reference"] = "our fp32 encode"
            torch.cuda.empty_cache()
            bench("native_VAE.encode", lambda: vae.encode(video), ref, row)
            bench("comfy_encode_tiled_512_64_64_8", lambda: vae.encode_tiled(video, tile_x=512, tile_y=512, overlap=64,
                                                                             tile_t=64, overlap_t=8), ref, row)
            bench("ours_default", lambda: encode(vae.first_stage_model, video[None], layout="comfy", progress=False), ref, row)
            bench("ours_2gib", lambda: encode(vae.first_stage_model, video[None], layout="comfy",
                                              budget_bytes=2 * 2**30, progress=False), ref, row)
            for k in ("ours_default", "ours_2gib"):
                speedups(row, k, ("native_VAE.encode", "comfy_encode_tiled_512_64_64_8"))
            res["runs"].append(row)
            del ref
        fp32 = vae = model = None  # (not del: the lambdas above name them; pyflakes reads del as undefined)
        torch.cuda.empty_cache()
    write_json(a.out, res)


if __name__ == "__main__":
    with torch.inference_mode():
        main()
