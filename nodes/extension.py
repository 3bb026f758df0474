"""The V3 extension object ComfyUI asks for through ``comfy_entrypoint``."""
from __future__ import annotations

import logging

from comfy_api.latest import ComfyExtension, io

from . import attention_nodes, kernel_warmup, telemetry_server, vae_nodes

NODE_MODULES = (vae_nodes, attention_nodes)
_FEATURE_MODULES = NODE_MODULES + (telemetry_server, kernel_warmup)  # each may have a one-time setup()
log = logging.getLogger("wan_accel")


def setup_features() -> None:
    """Run each feature's one-time ``setup()`` (hooks, routes); a failing one is switched off alone."""
    for module in _FEATURE_MODULES:
        setup = getattr(module, "setup", None)
        if setup is None:
            continue
        try:
            setup()
        except Exception as exc:
            log.warning("wan_accel: %s setup failed, that feature is off: %s", module.__name__, exc)


class WanAccelExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # ComfyUI 0.3.64 and 0.8.0 never call ComfyExtension.on_load; this runs once per load.
        setup_features()
        return [node for module in NODE_MODULES for node in module.NODES]
