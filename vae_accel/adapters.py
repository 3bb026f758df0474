"""Read a Wan VAE module tree (ComfyUI's or diffusers') into the engine's op graph.

The graph reuses the modules' own weights; only the control flow (caches, tiling) is ours.
Modules are recognised by their structure (attribute names), so neither ComfyUI nor
diffusers has to be importable.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from .ops import (
    AddShortcut,
    AvgDown,
    Conv,
    Patchify,
    StridedDown,
    TakeChannels,
    TimeDown,
    DupUp,
    FrameAttention,
    NormAct,
    Op,
    ResBlock,
    Seq,
    TimeUpsample,
    Unpatchify,
    Upsample2x,
    number_ops,
)

SUPPORTED_VAES = (
    "the Wan 2.1 VAE (wan_2.1_vae.safetensors, 16 latent channels, 8x spatial) and the Wan 2.2 VAE "
    "(wan2.2_vae.safetensors, 48 latent channels, 16x spatial), as loaded by ComfyUI's Load VAE "
    "(comfy.ldm.wan WanVAE) or as diffusers' AutoencoderKLWan"
)


class UnsupportedVAE(TypeError):
    """The module is not a Wan VAE this engine can drive. ``reason`` says why in a few words; the
    message adds, once, which VAEs are supported (or is ``message``, for callers that word it)."""

    def __init__(self, reason: str, message: str | None = None):
        self.reason = reason
        super().__init__(message or f"{reason}. Supported: {SUPPORTED_VAES}")


@dataclass
class DecoderGraph:
    """The decoder's op graph. It holds only weak references to the VAE's modules (cached graphs
    must not keep a VAE alive); callers pass the VAE again when they run it."""

    source: str  # "comfyui" or "diffusers"
    version: str  # "2.1" or "2.2"
    latent_channels: int
    out_channels: int
    stem: Seq  # post-quant conv, conv in, middle block: latent resolution, whole frames
    up: Seq  # upsampling path, head and (2.2) unpatchify: run per tile
    time_factor: int
    space_factor: int

    @property
    def halo_latent(self) -> float:
        """Receptive-field reach of the up path, in latent pixels (13 for Wan 2.1 rounds up from 12.25)."""
        return self.up.halo()


def _norm(m, act: bool = True) -> NormAct:
    return NormAct(m, act=act)


def _is_identity(m) -> bool:
    return m is None or isinstance(m, torch.nn.Identity)


def _res_comfy(m) -> ResBlock:
    norm1, _, conv1, norm2, _, _, conv2 = list(m.residual)
    short = None if _is_identity(m.shortcut) else Conv(m.shortcut)
    return ResBlock(_norm(norm1), Conv(conv1), _norm(norm2), Conv(conv2), short)


def _res_diffusers(m) -> ResBlock:
    short = None if _is_identity(m.conv_shortcut) else Conv(m.conv_shortcut)
    return ResBlock(_norm(m.norm1), Conv(m.conv1), _norm(m.norm2), Conv(m.conv2), short)


def _res(m) -> ResBlock:
    return _res_comfy(m) if hasattr(m, "residual") else _res_diffusers(m)


def _resample(m) -> Seq:
    if m.mode not in ("upsample2d", "upsample3d"):
        raise UnsupportedVAE(f"decoder resample mode {m.mode!r} is not an upsampler")
    ops: list[Op] = []
    if m.mode == "upsample3d":
        ops.append(TimeUpsample(Conv(m.time_conv)))
    conv2d = m.resample[1]
    ops += [Upsample2x(), Conv(conv2d)]
    return Seq(ops)


def _attention(m) -> FrameAttention:
    return FrameAttention(_norm(m.norm, act=False), m.to_qkv, m.proj)


def _up_item(m) -> Op:
    name = type(m).__name__
    if hasattr(m, "residual") or hasattr(m, "conv_shortcut"):
        return _res(m)
    if hasattr(m, "mode") and hasattr(m, "resample"):
        return _resample(m)
    if hasattr(m, "to_qkv"):
        raise UnsupportedVAE("attention inside the upsampling path needs whole frames; not a Wan VAE layout")
    raise UnsupportedVAE(f"unexpected decoder block {name}")


def _dup(m) -> DupUp:
    return DupUp(m.in_channels, m.out_channels, m.factor_t, m.factor_s)


def _up_block(m) -> Op:
    """One entry of the decoder's upsampling list, in either library's layout."""
    if hasattr(m, "upsamples") and isinstance(m.upsamples, torch.nn.Sequential):  # ComfyUI 2.2 Up_ResidualBlock
        main = Seq([_up_item(x) for x in m.upsamples])
        short = getattr(m, "avg_shortcut", None)
        return main if short is None else AddShortcut(main, _dup(short))
    if hasattr(m, "resnets"):  # diffusers WanUpBlock / WanResidualUpBlock
        items: list[Op] = [_res(r) for r in m.resnets]
        ups = getattr(m, "upsamplers", None) or ([m.upsampler] if getattr(m, "upsampler", None) is not None else [])
        items += [_resample(u) for u in ups]
        main = Seq(items)
        short = getattr(m, "avg_shortcut", None)
        return main if short is None else AddShortcut(main, _dup(short))
    return _up_item(m)  # ComfyUI 2.1: a flat list of blocks


def find_module(obj) -> torch.nn.Module:
    """Accept the bare module, ComfyUI's ``comfy.sd.VAE`` wrapper or anything holding one."""
    for attr in ("first_stage_model",):
        inner = getattr(obj, attr, None)
        if isinstance(inner, torch.nn.Module):
            return inner
    if isinstance(obj, torch.nn.Module):
        return obj
    raise UnsupportedVAE(f"expected a VAE module, got {type(obj).__name__}")


def build_decoder(vae) -> DecoderGraph:
    """The op graph of a Wan VAE decoder, or :class:`UnsupportedVAE` naming what is supported."""
    m = find_module(vae)
    dec = getattr(m, "decoder", None)
    if dec is None:
        raise UnsupportedVAE(f"{type(m).__name__} has no decoder")
    try:
        if hasattr(dec, "middle") and hasattr(m, "conv2"):  # ComfyUI comfy.ldm.wan.vae / vae2_2
            source = "comfyui"
            post_quant, conv_in = m.conv2, dec.conv1
            mid = list(dec.middle)
            blocks = list(dec.upsamples)
            head_norm, _, head_conv = list(dec.head)
        elif hasattr(dec, "mid_block") and hasattr(m, "post_quant_conv"):  # diffusers AutoencoderKLWan
            source = "diffusers"
            post_quant, conv_in = m.post_quant_conv, dec.conv_in
            mb = dec.mid_block
            if len(mb.attentions) != 1:
                raise UnsupportedVAE("middle block with more than one attention")
            mid = [mb.resnets[0], mb.attentions[0], mb.resnets[1]]
            blocks = list(dec.up_blocks)
            head_norm, head_conv = dec.norm_out, dec.conv_out
        else:
            raise UnsupportedVAE(f"{type(m).__name__} is not a Wan VAE")
        if not (hasattr(post_quant, "_padding") and hasattr(conv_in, "_padding")):
            raise UnsupportedVAE(f"{type(m).__name__} has no causal 3D convolutions")
        stem = Seq([Conv(post_quant), Conv(conv_in), _res(mid[0]), _attention(mid[1]), _res(mid[2])])
        up_ops = [_up_block(b) for b in blocks] + [_norm(head_norm), Conv(head_conv)]
    except (AttributeError, ValueError, TypeError, IndexError) as exc:
        if isinstance(exc, UnsupportedVAE):
            raise
        raise UnsupportedVAE(f"{type(m).__name__} does not have the Wan VAE layout ({exc})") from exc

    latent_channels = post_quant.weight.shape[1]
    out_channels = head_conv.weight.shape[0]
    patch = 1
    if latent_channels == 48 or out_channels == 12:  # Wan 2.2: 2x2 patches folded into 12 channels
        patch = 2
        up_ops.append(Unpatchify(patch))
        out_channels //= patch * patch
    up = Seq(up_ops)
    number_ops(Seq([stem, up]))
    return DecoderGraph(
        source=source,
        version="2.2" if patch == 2 else "2.1",
        latent_channels=latent_channels,
        out_channels=out_channels,
        stem=stem,
        up=up,
        time_factor=int(up.time_scale()),
        space_factor=int(up.space_scale()),
    )


@dataclass
class EncoderGraph:
    """The encoder's op graph; like :class:`DecoderGraph`, only weak references to the modules."""

    source: str
    version: str
    in_channels: int  # image channels before any patchify
    latent_channels: int
    down: Seq  # (2.2: patchify,) conv in and the downsampling path: run per tile
    tail: Seq  # middle block, head, quant conv, mean: latent resolution, whole frames
    time_factor: int
    space_factor: int

    @property
    def halo_pixels(self) -> float:
        return self.down.halo()


def _downsample(m) -> Seq:
    if m.mode not in ("downsample2d", "downsample3d"):
        raise UnsupportedVAE(f"encoder resample mode {m.mode!r} is not a downsampler")
    ops: list[Op] = [StridedDown(m.resample[1])]
    if m.mode == "downsample3d":
        ops.append(TimeDown(m.time_conv))
    return Seq(ops)


def _down_item(m) -> Op:
    if hasattr(m, "residual") or hasattr(m, "conv_shortcut"):
        return _res(m)
    if hasattr(m, "mode") and hasattr(m, "resample"):
        return _downsample(m)
    raise UnsupportedVAE(f"unexpected encoder block {type(m).__name__}")


def _avg(m) -> AvgDown:
    return AvgDown(m.in_channels, m.out_channels, m.factor_t, m.factor_s)


def _down_block(m) -> Op:
    if hasattr(m, "downsamples") and isinstance(m.downsamples, torch.nn.Sequential):  # ComfyUI 2.2 Down_ResidualBlock
        return AddShortcut(Seq([_down_item(x) for x in m.downsamples]), _avg(m.avg_shortcut))
    if hasattr(m, "resnets"):  # diffusers WanResidualDownBlock
        items: list[Op] = [_res(r) for r in m.resnets]
        if getattr(m, "downsampler", None) is not None:
            items.append(_downsample(m.downsampler))
        return AddShortcut(Seq(items), _avg(m.avg_shortcut))
    return _down_item(m)


def build_encoder(vae) -> EncoderGraph:
    """The op graph of a Wan VAE encoder, or :class:`UnsupportedVAE` naming what is supported."""
    m = find_module(vae)
    enc = getattr(m, "encoder", None)
    if enc is None:
        raise UnsupportedVAE(f"{type(m).__name__} has no encoder")
    try:
        if hasattr(enc, "middle") and hasattr(m, "conv1") and hasattr(m, "conv2"):
            source, quant, conv_in = "comfyui", m.conv1, enc.conv1
            mid = list(enc.middle)
            blocks = list(enc.downsamples)
            head_norm, _, head_conv = list(enc.head)
        elif hasattr(enc, "mid_block") and hasattr(m, "quant_conv"):
            source, quant, conv_in = "diffusers", m.quant_conv, enc.conv_in
            mb = enc.mid_block
            mid = [mb.resnets[0], mb.attentions[0], mb.resnets[1]]
            blocks = list(enc.down_blocks)
            head_norm, head_conv = enc.norm_out, enc.conv_out
        else:
            raise UnsupportedVAE(f"{type(m).__name__} is not a Wan VAE")
        down_ops: list[Op] = [Conv(conv_in)] + [_down_block(b) for b in blocks]
        latent_channels = quant.weight.shape[0] // 2
        tail = Seq([_res(mid[0]), _attention(mid[1]), _res(mid[2]), _norm(head_norm), Conv(head_conv), Conv(quant),
                    TakeChannels(latent_channels)])
    except (AttributeError, ValueError, TypeError, IndexError) as exc:
        if isinstance(exc, UnsupportedVAE):
            raise
        raise UnsupportedVAE(f"{type(m).__name__} does not have the Wan VAE layout ({exc})") from exc
    in_channels = conv_in.weight.shape[1]
    patch = 1
    if in_channels == 12:  # Wan 2.2 folds 2x2 pixels into channels first
        patch = 2
        down_ops.insert(0, Patchify(patch))
        in_channels //= patch * patch
    down = Seq(down_ops)
    number_ops(Seq([down, tail]))
    return EncoderGraph(source=source, version="2.2" if patch == 2 else "2.1", in_channels=in_channels,
                        latent_channels=latent_channels, down=down, tail=tail, time_factor=int(1 / down.time_scale()),
                        space_factor=int(1 / down.space_scale()))


# Weak keys, and values that refer to their module only weakly (ops.ModuleRef): an entry dies with its VAE.
_graphs: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def cached_graph(build, vae):
    """``build(vae)`` once per module: node graphs are reused across calls (weights are read at run time)."""
    module = find_module(vae)
    per_module = _graphs.setdefault(module, {})
    if build not in per_module:
        per_module[build] = build(module)
    return per_module[build]
