"""Swap the kernels into an op graph: a rewritten copy, the original left as it was.

- ``Upsample2x`` then a 3x3 ``Conv`` -> :class:`~.subpixel.SubPixelConv`;
- ``NormAct`` then ``Conv`` -> :class:`~.fused.NormConv` (norm into the causal buffer);
- a ``Conv`` with a thin input (the encoder's colour channels) -> :class:`~.fused.ThinInputConv`;
- ``ResBlock`` -> :class:`~.fused.FusedResBlock`, its residual add deferred into the next op
  when that op takes a pending sum;
- a conv's bias (of a NormConv or SubPixelConv, and of each block's last conv) deferred into the
  next norm the same way.

Nested plain ``Seq``s are flattened (the same computation), so a block at the end of one up
level still hands its sum to the norm that follows it. Op keys are kept, so the rewritten graph
reads and writes the same tile state and weight caches as the original.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from ..ops import AddShortcut, Conv, NormAct, Op, ResBlock, Seq, Upsample2x
from .channel_pad import THIN
from .fused import FusedResBlock, NormConv, ThinInputConv, accepts_pending
from .subpixel import SubPixelConv


@dataclass(frozen=True)
class KernelChoice:
    """Which rewrites to apply (each is exact on its own; the bench measures them one by one)."""

    subpixel: bool = True
    norm_conv: bool = True
    defer_residual: bool = True
    defer_bias: bool = True


def accelerate(root: Op, choice: KernelChoice = KernelChoice()) -> Op:
    return _rewrite(root, choice)


def _rewrite(op: Op, choice: KernelChoice) -> Op:
    if type(op) is Seq:
        return Seq(_rewrite_list(op.ops, choice))
    if isinstance(op, ResBlock) and choice.norm_conv:
        main = Seq(_rewrite_list(op.main.ops, choice))
        if choice.defer_bias and isinstance(main.ops[-1], NormConv):
            main.ops[-1].defer_bias = True  # the block adds conv2's bias into its sum (FusedResBlock.run)
        return FusedResBlock(main, op.shortcut, defer=False)
    if isinstance(op, AddShortcut):
        return AddShortcut(_rewrite(op.main, choice), op.shortcut)
    return op


def _flatten(ops):
    for op in ops:
        if type(op) is Seq:
            yield from _flatten(op.ops)
        else:
            yield op


def _rewrite_list(ops, choice: KernelChoice) -> list[Op]:
    items = list(_flatten(ops))
    out: list[Op] = []
    i = 0
    while i < len(items):
        op, nxt = items[i], items[i + 1] if i + 1 < len(items) else None
        if choice.subpixel and isinstance(op, Upsample2x) and _is_conv3x3_2d(nxt):
            out.append(SubPixelConv(nxt))
            i += 2
        elif choice.norm_conv and isinstance(op, NormAct) and isinstance(nxt, Conv):
            out.append(NormConv(op, nxt))
            i += 2
        elif choice.norm_conv and type(op) is Conv and op.cin <= THIN:
            out.append(ThinInputConv(op))
            i += 1
        else:
            out.append(_rewrite(op, choice))
            i += 1
    for op, nxt in zip(out, out[1:]):
        if choice.defer_residual and isinstance(op, FusedResBlock) and accepts_pending(nxt):
            op.defer = True
        if choice.defer_bias and isinstance(op, (NormConv, SubPixelConv)) and accepts_pending(nxt):
            op.defer_bias = True
            if isinstance(op, NormConv):
                # a norm reading it straight after uses the sum once; a block's input is read again
                op.keep_pending = not isinstance(nxt, NormConv)
    return out


def _is_conv3x3_2d(op) -> bool:
    return isinstance(op, Conv) and op.kt == 1 and op.k == 3 and op.module.weight.dim() == 4


def accelerate_graph(graph, choice: KernelChoice = KernelChoice()):
    """A copy of a ``DecoderGraph`` / ``EncoderGraph`` with every op path (its ``Seq`` fields) rewritten."""
    paths = {f.name: accelerate(getattr(graph, f.name), choice) for f in fields(graph) if isinstance(getattr(graph, f.name), Seq)}
    return replace(graph, **paths)


_accelerated_builders: dict = {}


def accelerated(build):
    """``build`` (adapters.build_decoder / build_encoder) followed by :func:`accelerate_graph`, as one
    function that is the same object on every call: the graph cache (adapters.cached_graph) keys on it,
    so the rewritten graph is built once per VAE and, like every cached graph, holds the VAE only weakly."""
    if build not in _accelerated_builders:
        def build_accelerated(vae):
            return accelerate_graph(build(vae))

        build_accelerated.__name__ = f"accelerated_{build.__name__}"
        _accelerated_builders[build] = build_accelerated
    return _accelerated_builders[build]
