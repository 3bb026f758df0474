"""What the recorder keeps about one node while a run goes on (mutable; rendered by :mod:`.records`)."""
from __future__ import annotations

from .model_activity import ModelActivity


class NodeState:
    __slots__ = (
        "id", "display_id", "parent_id", "type", "title", "first_start", "seg_start", "active_s",
        "finish", "starts", "probe_token", "gpu_pending", "gpu_s", "mem", "rss_before", "rss_after",
        "models", "progress", "phases", "notes", "cached", "status", "error", "order",
    )

    def __init__(self, node_id: str, order: int):
        self.id = node_id
        self.display_id = node_id
        self.parent_id = None
        self.type = None
        self.title = None
        self.first_start = None  # clock at the first start; a cached node gets its finish time
        self.seg_start = None  # clock at the start of the segment running now, None between segments
        self.active_s = 0.0
        self.finish = None
        self.starts = 0
        self.probe_token = None
        self.gpu_pending: list = []  # CUDA event pairs the GPU has not passed yet
        self.gpu_s = 0.0
        self.mem: dict = {}  # probe figures in bytes: vram_peak_allocated, vram_allocated, ...
        self.rss_before = None
        self.rss_after = None
        self.models = ModelActivity()
        self.progress: list = []  # (clock, value, max)
        self.phases: list = []
        self.notes: list = []
        self.cached = False
        self.status = "pending"
        self.error = None
        self.order = order
