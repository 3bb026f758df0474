"""Wan VAE decode/encode engine: exact tiling, carried causal caches, flat VRAM. No ComfyUI import."""
from .adapters import SUPPORTED_VAES, UnsupportedVAE, build_decoder, build_encoder
from .decode import decode, decode_plan
from .encode import encode
from .planner import Plan, plan_decode
from .run_options import RunOptions
from .validate import BadLatent, BadVideo

__all__ = ["SUPPORTED_VAES", "UnsupportedVAE", "BadLatent", "BadVideo", "Plan", "RunOptions", "build_decoder",
           "build_encoder", "decode", "decode_plan", "encode", "plan_decode"]
