"""Cold vs warm decode (first call pays torch.compile for the fused norm; later calls do not),
with ComfyUI's native VAE.decode as the anchor in the same run. Writes JSON.

    python bench/vae_decode_warm.py --comfy /path/to/ComfyUI --out bench/results/vae_decode_warm.json
"""
from __future__ import annotations

import argparse

import torch

from _common import Timer, load_comfy, load_wan_accel, write_json
from vae_decode import comfy_wan21


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--comfy", required=True)
    p.add_argument("--out", default="bench/results/vae_decode_warm.json")
    a = p.parse_args()
    load_comfy(a.comfy)
    load_wan_accel()
    import comfy.sd
    from wan_accel.vae_accel import decode

    dev = torch.device("cuda")
    vae = comfy.sd.VAE(sd=comfy_wan21(96).state_dict())
    z = torch.randn(1, 16, 21, 152, 104)
    vae.decode(z[:, :, :2, :16, :16])
    res = {"device": torch.cuda.get_device_name(), "frames": 81, "size": "1216x832"}
    with Timer(dev) as t:
        vae.decode(z)
    res["native_VAE.decode"] = {"s": round(t.seconds, 3), "peak_gib": round(t.peak_gib, 3)}
    for name, kw in [("eager_norm", dict(fused_norm=False)), ("fused_norm", dict(fused_norm=True))]:
        for run in ("cold", "warm"):
            with Timer(dev) as t:
                decode(vae.first_stage_model, z, layout="comfy", progress=False, **kw)
            res[f"ours_{name}_{run}"] = {"s": round(t.seconds, 3), "peak_gib": round(t.peak_gib, 3),
                                         "speedup_vs_native": round(res["native_VAE.decode"]["s"] / t.seconds, 3)}
            print(name, run, res[f"ours_{name}_{run}"], flush=True)
    write_json(a.out, res)


if __name__ == "__main__":
    with torch.inference_mode():
        main()
