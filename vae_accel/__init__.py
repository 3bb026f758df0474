"""Wan VAE decode/encode engine: exact tiling, carried causal caches, flat VRAM. No ComfyUI import."""
from .adapters import SUPPORTED_VAES, UnsupportedVAE, build_decoder
from .decode import decode
from .planner import Plan, plan_decode
from .validate import BadLatent

__all__ = ["SUPPORTED_VAES", "UnsupportedVAE", "BadLatent", "Plan", "build_decoder", "decode", "plan_decode"]
