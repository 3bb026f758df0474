"""ComfyUI nodes over the VAE engine: a decode node and a patch that reroutes any VAE node."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..vae_accel import options
from ..vae_accel.devices import AUTO, devices_problem
from . import vae_bridge

log = logging.getLogger("wan_accel")


def _plan_inputs() -> list:
    return [
        io.Float.Input("max_vram_gb", default=0.0, min=0.0, max=options.MAX_VRAM_GB, step=0.25, optional=True,
                       tooltip="Most device memory the VAE's work may use, in GiB (its weights not counted), and "
                               "never more than is free: no model is unloaded for it. 0: half of the free "
                               "VRAM (with Dynamic VRAM, counting what ComfyUI can stream out), kept between 3 and "
                               "8 GiB for decode and 2 and 8 GiB for encode, and never more than core's own VAE "
                               "would reserve. Less memory means smaller tiles and more time."),
        io.Int.Input("tile_size", default=0, min=0, max=options.MAX_TILE_PIXELS, step=16, optional=True,
                     tooltip="Largest tile side in image pixels (decode's output, encode's input); 0: the planner "
                             f"chooses. At least {options.min_tile_pixels(8)} ({options.min_tile_pixels(16)} for the "
                             "Wan 2.2 VAE). Tiles are exact (no blending) but each recomputes a border it shares "
                             "with its neighbours, so small tiles cost far more time: at 1216x832, 128 px tiles do "
                             "about 1.8x the decode work and 3x the encode work of whole frames, 64 px about 3x "
                             "and 6x."),
        io.Int.Input("slice_frames", default=0, min=0, max=options.MAX_SLICE_FRAMES, step=1, optional=True,
                     tooltip="Latent frames per step (each is 4 video frames); more is faster "
                             "and uses more VRAM. 0: the planner chooses."),
        io.String.Input("devices", default=AUTO, optional=True,
                        tooltip="GPUs that share the VAE's tiles. auto: every visible GPU with enough free memory, "
                                "the VAE's own GPU first (on one GPU, or on the CPU, just that device, as without "
                                "this input). Or CUDA indices such as 0,1. The frames equal a one-GPU run's (bitwise when its tiles are the same). "
                                "Each extra GPU holds a copy of the VAE's weights for the call and the plan's "
                                "budget; one that fails or runs out of memory hands its tiles to the others. "
                                "Encode shares only a plan of more than one tile (tiled by max_vram_gb or "
                                "tile_size); the decode's stem and the encode's middle block run on the VAE's own GPU."),
    ]


def _schema(node_id: str, display_name: str, description: str, inputs: list, output) -> io.Schema:
    """One VAE node's schema: its own inputs, then the plan inputs every VAE node shares."""
    return io.Schema(node_id=node_id, display_name=display_name, category="wan_accel", description=description,
                     inputs=[*inputs, *_plan_inputs()], outputs=[output])


class PlanInputsNode(io.ComfyNode):
    """The checks ComfyUI cannot make for the plan inputs, run before the prompt is queued.

    Naming an input here switches ComfyUI's own min/max check off for it, so the range is
    checked here too; slice_frames keeps ComfyUI's check."""

    @classmethod
    def validate_inputs(cls, max_vram_gb=0.0, tile_size=0, devices=AUTO):
        return (options.vram_problem(max_vram_gb) or options.tile_problem(tile_size)
                or devices_problem(devices, vae_bridge.visible_cuda_devices()) or True)


class WanAccelVAEDecode(PlanInputsNode):
    @classmethod
    def define_schema(cls):
        return _schema(
            "WanAccelVAEDecode", "Wan VAE Decode (exact, low VRAM)",
            "Decodes a Wan video latent with exact tiles and carried causal caches: the same frames "
            "as an untiled decode, with VRAM that stays flat however many frames there are.",
            [io.Latent.Input("samples", tooltip="The Wan video latent to decode (5-D: batch, channels, frames, h, w)."),
             io.Vae.Input("vae", tooltip="A Wan 2.1 or Wan 2.2 VAE from Load VAE.")],
            io.Image.Output(tooltip="Decoded frames, like core VAE Decode's output."))

    @classmethod
    def execute(cls, samples, vae, max_vram_gb=0.0, tile_size=0, slice_frames=0, devices=AUTO) -> io.NodeOutput:
        images = vae_bridge.decode(vae, samples["samples"],
                                   vae_bridge.Overrides(max_vram_gb, tile_size, slice_frames, devices))
        if images.dim() == 5:  # video batches flatten to frames, as core VAE Decode does
            images = images.reshape(-1, *images.shape[-3:])
        return io.NodeOutput(images)


class WanAccelVAEEncode(PlanInputsNode):
    @classmethod
    def define_schema(cls):
        return _schema(
            "WanAccelVAEEncode", "Wan VAE Encode (exact, low VRAM)",
            "Encodes frames with a Wan VAE in temporal slices with carried causal caches (and exact "
            "tiles only when VRAM demands): the same latent as an untiled encode, VRAM flat in frames.",
            [io.Image.Input("pixels", tooltip="Frames to encode (a video is a batch of frames); 1 + 4k frames "
                                              "are used, extra frames are dropped as in core VAE Encode."),
             io.Vae.Input("vae", tooltip="A Wan 2.1 or Wan 2.2 VAE from Load VAE.")],
            io.Latent.Output(tooltip="The video latent, like core VAE Encode's output."))

    @classmethod
    def execute(cls, pixels, vae, max_vram_gb=0.0, tile_size=0, slice_frames=0, devices=AUTO) -> io.NodeOutput:
        latent = vae_bridge.encode(vae, pixels, vae_bridge.Overrides(max_vram_gb, tile_size, slice_frames, devices))
        return io.NodeOutput({"samples": latent})


class WanAccelVAEPatch(PlanInputsNode):
    @classmethod
    def define_schema(cls):
        return _schema(
            "WanAccelVAEPatch", "Wan VAE Accelerate (patch)",
            "Returns the VAE with its decode and encode routed through the exact low-VRAM engine, so "
            "core VAE Decode, WanImageToVideo and every other node using it benefit. A VAE the "
            "engine does not support passes through unchanged.",
            [io.Vae.Input("vae", tooltip="The VAE to accelerate (Wan 2.1 or Wan 2.2).")],
            io.Vae.Output(tooltip="The same VAE with accelerated decode/encode."))

    @classmethod
    def execute(cls, vae, max_vram_gb=0.0, tile_size=0, slice_frames=0, devices=AUTO) -> io.NodeOutput:
        reason = vae_bridge.unsupported_reason(vae)
        if reason:
            log.info("wan_accel: WanAccelVAEPatch leaves this VAE unchanged: %s", reason)
            return io.NodeOutput(vae)
        patched = vae_bridge.patch(vae, vae_bridge.Overrides(max_vram_gb, tile_size, slice_frames, devices))
        return io.NodeOutput(patched)


NODES = [WanAccelVAEDecode, WanAccelVAEEncode, WanAccelVAEPatch]
