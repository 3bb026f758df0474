"""comfyui-wan-accel: faster, lighter Wan 2.x video in ComfyUI.

ComfyUI imports this file from ``custom_nodes/``. Nothing here may import ComfyUI at
module import time: the same package is imported as ``wan_accel`` by plain Python
(tests, benchmarks, the command line), where ComfyUI does not exist.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    # Imported lazily: ComfyUI's modules exist only once ComfyUI is loading us.
    from .nodes.extension import WanAccelExtension

    return WanAccelExtension()
