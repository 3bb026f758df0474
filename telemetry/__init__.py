"""Per-node and per-phase timing and memory telemetry (engine side knows nothing of ComfyUI)."""
