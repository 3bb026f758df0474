"""Region-aware operations of the Wan VAE, reading weights from the real module tree: one import for all.

The algebra and the walk over a graph live in :mod:`.op_base`, the layers in :mod:`.op_layers`, the
resampling in :mod:`.op_resample`, and what a run carries (tile state, execution context) in
:mod:`.context`.
"""
from .context import ExecContext, TileState, WeightSource, module_weights
from .op_base import CostTally, ModuleRef, Op, Rescale, Seq, Size, number_ops, walk
from .op_layers import AddShortcut, Conv, FrameAttention, NormAct, ResBlock, TakeChannels, rms_norm_silu
from .op_resample import (AvgDown, DupUp, Patchify, PatchShuffle, StridedDown, TimeDown, TimeUpsample, Unpatchify,
                          Upsample2x)

__all__ = [
    "AddShortcut", "AvgDown", "Conv", "CostTally", "DupUp", "ExecContext", "FrameAttention", "ModuleRef", "NormAct",
    "Op", "Patchify", "PatchShuffle", "Rescale", "ResBlock", "Seq", "Size", "StridedDown", "TakeChannels", "TileState", "TimeDown",
    "TimeUpsample", "Unpatchify", "Upsample2x", "WeightSource", "module_weights", "number_ops", "rms_norm_silu",
    "walk",
]
