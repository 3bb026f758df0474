"""Bench-only ComfyUI nodes (V3 API), used in-process (``two_pass``, ``vae_after_sampler``) and as a single-file
custom node of the server bench (``server_memory`` links this file into its ``custom_nodes``). Import it after
ComfyUI is on sys.path.

* ``WanAccelBenchConditioning``: random ``[1, tokens, 4096]`` text embeddings in place of the 5.7B umt5
  encoder (CLIPLoader + CLIPTextEncode), the shape umt5 gives Wan;
* ``WanAccelBenchCapture``: an output node that keeps the decoded frames in ``CAPTURED[key]`` (to compare
  paths) or, with ``keep`` off, only their mean (so a long server session holds nothing).
"""
import torch
from comfy_api.latest import io

CAPTURED: dict = {}


def random_conditioning(seed: int, tokens: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, 4096, generator=g) * 0.1, {}]]


class WanAccelBenchConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="WanAccelBenchConditioning", category="bench",
                         inputs=[io.Int.Input("seed", default=0, min=0, max=2**31 - 1),
                                 io.Int.Input("tokens", default=512, min=1, max=4096)],
                         outputs=[io.Conditioning.Output()])

    @classmethod
    def execute(cls, seed, tokens) -> io.NodeOutput:
        return io.NodeOutput(random_conditioning(seed, tokens))


class WanAccelBenchCapture(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="WanAccelBenchCapture", category="bench", is_output_node=True,
                         inputs=[io.Image.Input("images"), io.String.Input("key", default="frames"),
                                 io.Boolean.Input("keep", default=True)])

    @classmethod
    def execute(cls, images, key, keep=True) -> io.NodeOutput:
        CAPTURED[key] = images.detach().float().cpu() if keep else float(images.float().mean())
        return io.NodeOutput()


NODE_CLASS_MAPPINGS = {"WanAccelBenchConditioning": WanAccelBenchConditioning,
                       "WanAccelBenchCapture": WanAccelBenchCapture}
