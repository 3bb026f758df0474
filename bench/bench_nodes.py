"""Bench-only ComfyUI nodes, used in-process (``two_pass``, ``vae_after_sampler``) and as a single-file custom
node of the server bench (``server_memory`` links this file into its ``custom_nodes``).

* ``WanAccelBenchConditioning``: random ``[1, tokens, 4096]`` text embeddings in place of the 5.7B umt5
  encoder (CLIPLoader + CLIPTextEncode), the shape umt5 gives Wan;
* ``WanAccelBenchCapture``: an output node that keeps the decoded frames in ``CAPTURED[key]`` (to compare
  paths) or, with ``keep`` off, only their mean (so a long server session holds nothing).
"""
import torch

CAPTURED: dict = {}


class WanAccelBenchConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
                             "tokens": ("INT", {"default": 512, "min": 1, "max": 4096})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "bench"

    def make(self, seed, tokens):
        g = torch.Generator().manual_seed(seed)
        return ([[torch.randn(1, tokens, 4096, generator=g) * 0.1, {}]],)


class WanAccelBenchCapture:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "key": ("STRING", {"default": "frames"}),
                             "keep": ("BOOLEAN", {"default": True})}}

    RETURN_TYPES = ()
    FUNCTION = "capture"
    OUTPUT_NODE = True
    CATEGORY = "bench"

    def capture(self, images, key, keep=True):
        CAPTURED[key] = images.detach().float().cpu() if keep else float(images.float().mean())
        return {}


NODE_CLASS_MAPPINGS = {"WanAccelBenchConditioning": WanAccelBenchConditioning,
                       "WanAccelBenchCapture": WanAccelBenchCapture}
