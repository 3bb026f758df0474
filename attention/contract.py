"""ComfyUI's attention calling contract, reduced to one normalised call.

ComfyUI's attention functions are called as::

    fn(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
       skip_output_reshape=False, transformer_options=..., **kwargs)

- ``skip_reshape=False``: q/k/v are ``(B, L, heads*D)``; ``True``: ``(B, heads, L, D)``.
- ``skip_output_reshape=False``: the result is ``(B, Lq, heads*D)``; ``True``: ``(B, heads, Lq, D)``.
- ``mask``: 2-D ``(Lq, Lk)``, 3-D ``(B, Lq, Lk)`` or 4-D ``(B, H, Lq, Lk)``; bool (True keeps) or
  additive float, as ``attention_pytorch`` treats it.
- ``low_precision_attention=False`` (ComfyUI 0.33+, e.g. Wan's i2v image cross-attention): the call
  must not go to a kernel that quantises (SageAttention can give NaNs there).
- ``scale`` (softmax scale), ``enable_gqa`` (fewer k/v heads than q heads) and any other keyword the
  kernels here do not implement: the call is left to ComfyUI's function, which receives every keyword
  unchanged. ``preferred_attention`` (a model's per-layer choice) is honoured the way ComfyUI does when
  its function runs (see :mod:`.override`).

:class:`AttnCall` holds q/k/v as ``(B, H, L, D)`` *views* (no copy) plus the flags, so every
backend takes one layout and the output goes back in the caller's layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

_ARG_NAMES = ("q", "k", "v", "heads", "mask", "attn_precision", "skip_reshape", "skip_output_reshape")
# keywords that change nothing a kernel computes, or that the override itself handles
_UNDERSTOOD = frozenset(_ARG_NAMES) | {"transformer_options", "_inside_attn_wrapper", "low_precision_attention",
                                       "preferred_attention"}


class UnsupportedCall(ValueError):
    """A call whose keywords ask for something the kernels here do not implement (ComfyUI's runs it)."""


def unsupported_keywords(kwargs: dict, head_dim: int) -> str | None:
    """Why the call needs ComfyUI's own function (a keyword the kernels here would ignore), or None."""
    scale = kwargs.get("scale")
    if scale is not None and abs(float(scale) * head_dim ** 0.5 - 1.0) > 1e-6:
        return f"the call asks for softmax scale {float(scale):.6g} (kernels here use 1/sqrt({head_dim}))"
    if kwargs.get("enable_gqa"):
        return "the call uses grouped-query attention (enable_gqa=True)"
    unknown = sorted(k for k in kwargs if k not in _UNDERSTOOD and k not in ("scale", "enable_gqa"))
    if unknown:
        return f"the call passes {', '.join(unknown)}, which the kernels here do not implement"
    return None


def bind_args(args: tuple, kwargs: dict) -> dict:
    """Map positional/keyword arguments of an attention call onto the contract's names."""
    bound: dict[str, Any] = {"mask": None, "attn_precision": None, "skip_reshape": False, "skip_output_reshape": False}
    if len(args) > len(_ARG_NAMES):
        raise TypeError(f"attention call with {len(args)} positional arguments; the contract has {len(_ARG_NAMES)}")
    bound.update(zip(_ARG_NAMES, args))
    for name in _ARG_NAMES:
        if name in kwargs:
            bound[name] = kwargs[name]
    for name in ("q", "k", "v", "heads"):
        if name not in bound:
            raise TypeError(f"attention call without {name!r}")
    return bound


def normalise_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Give a mask the 4-D shape ``(B|1, H|1, Lq|1, Lk)`` that ``attention_pytorch`` gives it."""
    if mask is None:
        return None
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    return mask


@dataclass
class AttnCall:
    q: torch.Tensor  # (B, H, Lq, D) view
    k: torch.Tensor  # (B, H, Lk, D) view
    v: torch.Tensor  # (B, H, Lk, D) view
    heads: int
    mask: torch.Tensor | None  # 4-D or None
    attn_precision: Any
    skip_reshape: bool
    skip_output_reshape: bool
    low_precision_ok: bool = True  # False: low_precision_attention=False, no quantising kernel

    @classmethod
    def from_args(cls, args: tuple, kwargs: dict) -> "AttnCall":
        """Raises :class:`UnsupportedCall` for keywords the kernels here do not implement."""
        b = bind_args(args, kwargs)
        q, k, v, heads = b["q"], b["k"], b["v"], int(b["heads"])
        reason = unsupported_keywords(kwargs, q.shape[-1] if b["skip_reshape"] else q.shape[-1] // heads)
        if reason:
            raise UnsupportedCall(reason)
        if b["skip_reshape"]:
            if q.ndim != 4:
                raise ValueError(f"skip_reshape=True expects (B, H, L, D) tensors, got {tuple(q.shape)}")
        else:
            if q.ndim != 3:
                raise ValueError(f"skip_reshape=False expects (B, L, H*D) tensors, got {tuple(q.shape)}")
            d = q.shape[-1] // heads
            q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, d).transpose(1, 2) for t in (q, k, v))
        return cls(q, k, v, heads, normalise_mask(b["mask"]), b["attn_precision"],
                   bool(b["skip_reshape"]), bool(b["skip_output_reshape"]),
                   kwargs.get("low_precision_attention", True) is not False)

    # -- facts backends and the schedule ask about ------------------------------------------
    @property
    def batch(self) -> int:
        return self.q.shape[0]

    @property
    def head_dim(self) -> int:
        return self.q.shape[-1]

    @property
    def q_len(self) -> int:
        return self.q.shape[2]

    @property
    def k_len(self) -> int:
        return self.k.shape[2]

    @property
    def dtype(self) -> torch.dtype:
        return self.q.dtype

    @property
    def device(self) -> torch.device:
        return self.q.device

    @property
    def is_self_attention(self) -> bool:
        """Wan's self-attention attends the latent tokens to themselves (Lq == Lk); its cross-attention
        attends them to the text (512) or image (257) tokens. A latent with exactly as many tokens as
        the context would be misread; Wan's smallest video latents are far larger."""
        return self.q_len == self.k_len

    @property
    def wants_fp32(self) -> bool:
        return self.attn_precision == torch.float32 and self.dtype != torch.float32

    def key(self) -> tuple:
        """What a verification or an ``auto`` choice is valid for."""
        m = self.mask
        mask_sig = None if m is None else (m.dtype, tuple(m.shape))
        q = self.q
        return (q.shape[0], self.heads, q.shape[2], self.k.shape[2], q.shape[3], q.dtype, q.device, mask_sig,
                self.attn_precision == torch.float32 and q.dtype != torch.float32, self.low_precision_ok)

    def shape_str(self) -> str:
        return f"B{self.batch} H{self.heads} Lq{self.q_len} Lk{self.k_len} D{self.head_dim} {str(self.dtype).replace('torch.', '')}"

    # -- back to the caller's layout ---------------------------------------------------------
    def finish(self, out_bhld: torch.Tensor) -> torch.Tensor:
        """``out_bhld`` is ``(B, H, Lq, D)`` (a view is fine); return the caller's layout and dtype."""
        if out_bhld.dtype != self.dtype:
            out_bhld = out_bhld.to(self.dtype)
        if self.skip_output_reshape:
            return out_bhld
        b, h, lq, d = out_bhld.shape
        return out_bhld.transpose(1, 2).reshape(b, lq, h * d)
