"""ComfyUI adapters. Only :mod:`.extension` and the node modules import ComfyUI."""
