"""Random-weight model files for the benches, cached: the Wan 2.2 i2v experts (fp8 on disk at full size),
their LoRAs and the Wan 2.1 / 2.2 VAEs, under the real file names in a ComfyUI models folder layout.

    python bench/models.py --comfy /tmp/comfy-0.33.0 --out /tmp/wan_accel_models --layers 40   # GPU: ~1 min

Key names and shapes come from ComfyUI's own modules (``fixtures/build.py``); only the storage differs
from the tests' fixtures: the experts' block weights are written as float8_e4m3fn, the way the real
``*_fp8_scaled`` files hold them (without their per-tensor scales; UNETLoader's ``fp8_e4m3fn`` computes the
same way), everything else bf16. A 40-block expert is ~14 GB: generated tensor by tensor on the GPU and
streamed into the safetensors file, never whole in memory. ``ensure`` reuses a folder whose manifest
matches the request, so a second bench command on a still-warm machine skips the minute of writing.
"""
from __future__ import annotations

import argparse
import json
import math
import struct
import sys
import time
from pathlib import Path

import torch

from _common import load_wan_accel

SAFETENSORS_DTYPES = {torch.float8_e4m3fn: "F8_E4M3", torch.bfloat16: "BF16", torch.float16: "F16",
                      torch.float32: "F32"}
MANIFEST = "wan_accel_bench_models.json"
VAE22 = "wan2.2_vae.safetensors"


def write_safetensors(path: Path, entries: list, metadata: dict | None = None) -> int:
    """Stream ``entries`` [(key, shape, dtype, make() -> tensor)] into a safetensors file, one tensor in
    memory at a time; returns the file size. The format: 8-byte little-endian header length, a JSON header
    (dtype, shape, byte offsets per key), the raw little-endian tensor bytes in header order."""
    header, offset = {}, 0
    for key, shape, dtype, _ in entries:
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[key] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for key, shape, dtype, make in entries:
            t = make()
            if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                raise ValueError(f"{key}: made {tuple(t.shape)} {t.dtype}, declared {tuple(shape)} {dtype}")
            f.write(t.contiguous().view(torch.uint8).cpu().numpy().tobytes())
    tmp.replace(path)
    return path.stat().st_size


def random_tensor(key: str, shape: tuple, g: torch.Generator, device: str) -> torch.Tensor:
    """Values scaled like a trained net's: matrices 1/sqrt(fan_in) (modulation: its last dim), norm
    weights near 1, biases small."""
    t = torch.randn(shape, generator=g, device=device)
    if len(shape) > 1:
        return t / math.sqrt(shape[-1] if "modulation" in key else math.prod(shape[1:]))
    return 1.0 + 0.1 * t if "norm" in key else 0.02 * t


def expert_entries(shapes: dict, seed: int, device: str, fp8: bool) -> list:
    """The expert's tensors as ``write_safetensors`` entries; block matrices in fp8 when ``fp8``."""
    g = torch.Generator(device=device).manual_seed(seed)

    def entry(key, shape):
        dtype = torch.float8_e4m3fn if fp8 and key.startswith("blocks.") and len(shape) == 2 else torch.bfloat16
        return key, shape, dtype, lambda: random_tensor(key, shape, g, device).to(dtype)

    return [entry(k, s) for k, s in shapes.items()]


def random_sd(module: torch.nn.Module, seed: int, dtype=torch.bfloat16) -> dict:
    """Random values for a module's state dict, scaled like ``fixtures.build``'s VAE."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in module.state_dict().items():
        if p.dim() >= 2:
            out[name] = (torch.randn(p.shape, generator=g) * (1.5 / math.prod(p.shape[1:])) ** 0.5).to(dtype)
        else:
            out[name] = (torch.rand(p.shape, generator=g) + 0.5).to(dtype)
    return out


def vae22_sd(seed: int = 7) -> dict:
    """The Wan 2.2 VAE (48 latent channels, 16x; ComfyUI builds it at dim 160 / 256 whatever the file says)."""
    import comfy.ldm.wan.vae2_2 as wv

    with torch.device("meta"):
        model = wv.WanVAE(dim=160, dec_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                          temperal_downsample=[False, True, True])
    return random_sd(model, seed)


def request(dim: int, layers: int, rank: int, fp8: bool, vae22: bool, seed: int = 0) -> dict:
    return {"dim": dim, "layers": layers, "rank": rank, "experts": "fp8_e4m3fn" if fp8 else "bfloat16",
            "vae22": vae22, "seed": seed, "format": 2}


def ensure(out: Path, dim: int, layers: int, rank: int, fp8: bool, vae22: bool = False, device: str = "cpu",
           seed: int = 0) -> dict:
    """The models folder ``out`` holding what was asked (reused when its manifest says so); the manifest."""
    from safetensors.torch import save_file

    load_wan_accel()
    from wan_accel.fixtures import build as fixtures

    want = request(dim, layers, rank, fp8, vae22, seed)
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        have = json.loads(manifest_path.read_text())
        if have.get("request") == want and all((out / rel).exists() for rel in have.get("files", {})):
            return have | {"reused": True}
    manifest_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    shapes = fixtures.wan22_i2v_expert_shapes(dim, layers)
    files = {}
    for rel, expert_seed in ((f"diffusion_models/{fixtures.HIGH}", seed + 1), (f"diffusion_models/{fixtures.LOW}", seed + 2)):
        files[rel] = write_safetensors(out / rel, expert_entries(shapes, expert_seed, device, fp8),
                                       {"wan_accel_fixture": "random weights, real key names"})
    small = {f"loras/{fixtures.LORA_HIGH}": lambda: fixtures.lora_sd(shapes, rank, seed + 3),
             f"loras/{fixtures.LORA_LOW}": lambda: fixtures.lora_sd(shapes, rank, seed + 4),
             f"vae/{fixtures.VAE}": lambda: fixtures.vae21_sd(seed + 5, torch.bfloat16)}
    if vae22:
        small[f"vae/{VAE22}"] = lambda: vae22_sd(seed + 6)
    for rel, make in small.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in make().items()}, str(out / rel))
        files[rel] = (out / rel).stat().st_size
    if device == "cuda":
        torch.cuda.empty_cache()
    manifest = {"request": want, "files": files, "num_heads": dim // 128, "ffn_dim": shapes["blocks.0.ffn.0.weight"][0],
                "write_s": round(time.perf_counter() - t0, 1), "device": device}
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return manifest | {"reused": False}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfy", required=True, help="ComfyUI checkout (key names come from its modules)")
    ap.add_argument("--out", required=True, help="models folder (diffusion_models/, loras/, vae/)")
    ap.add_argument("--dim", type=int, default=5120)
    ap.add_argument("--layers", type=int, default=40)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--bf16-experts", action="store_true", help="store the experts in bf16, not fp8")
    ap.add_argument("--vae22", action="store_true", help="also the Wan 2.2 VAE (1.4 GB)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    opts = ap.parse_args(argv)
    sys.path.insert(0, str(Path(opts.comfy).resolve()))
    from comfy.cli_args import args

    args.cpu = opts.device == "cpu"
    manifest = ensure(Path(opts.out), opts.dim, opts.layers, opts.rank, not opts.bf16_experts, opts.vae22, opts.device)
    print(json.dumps(manifest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
