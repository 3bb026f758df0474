"""Op-by-op part of bench/vae_kernels.py: the shapes one tile step runs, and each op timed against
its kernel replacement (see that file's docstring)."""
from __future__ import annotations

import json
import statistics
import time

import torch
import torch.nn.functional as F


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# ------------------------------------------------------------------ recording the shapes of one step


class StopRecording(Exception):
    pass


def record_step(decode_with_fault):
    """Every NormAct / Upsample2x / Conv / ResBlock call of the first tile's second step (a full
    slice) of the engine's own decode (``decode_with_fault(fault)``), with its rectangles."""
    from wan_accel.vae_accel import ops

    calls, count = [], {"decode": 0}
    on = [False]
    originals = {cls: cls.run for cls in (ops.NormAct, ops.Upsample2x, ops.Conv, ops.ResBlock)}

    def wrap(cls):
        def run(self, x, have, out, size, st, ctx):
            if on[0]:
                calls.append({"kind": cls.__name__, "op": self, "x_shape": tuple(x.shape), "have": have, "out": out,
                              "size": size, "dtype": x.dtype})
            return originals[cls](self, x, have, out, size, st, ctx)
        return run

    def fault(stage, info):
        if stage == "decode":
            count["decode"] += 1
            on[0] = count["decode"] == 2
            if count["decode"] == 3:
                raise StopRecording

    for cls in originals:
        cls.run = wrap(cls)
    try:
        decode_with_fault(fault)
    except StopRecording:
        pass
    finally:
        for cls, fn in originals.items():
            cls.run = fn
    return calls


def pairs(calls):
    """(upsample call, its conv call), (norm call, the causal conv after it) and residual-add shapes."""
    up, norm_conv, norms, adds = [], [], [], []
    for prev, nxt in zip(calls, calls[1:]):
        if prev["kind"] == "Upsample2x" and nxt["kind"] == "Conv":
            up.append((prev, nxt))
        if prev["kind"] == "NormAct" and nxt["kind"] == "Conv" and nxt["op"].kt > 1:
            norm_conv.append((prev, nxt))
    for c in calls:
        if c["kind"] == "NormAct":
            norms.append(c)
        if c["kind"] == "ResBlock":
            adds.append(c)
    return up, norm_conv, norms, adds


def dedupe(items, key):
    seen = {}
    for it in items:
        seen.setdefault(key(it), it)
    return list(seen.values())


# ------------------------------------------------------------------ op by op


def time_op(dev, fn, reps):
    """First call and the median of ``reps`` warm calls, in ms (synchronised)."""
    sync(dev)
    t0 = time.perf_counter()
    fn()
    sync(dev)
    first = time.perf_counter() - t0
    fn()
    times = []
    for _ in range(reps):
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return {"first_ms": round(first * 1e3, 3), "ms": round(statistics.median(times) * 1e3, 3)}


def rand(shape, dev, dtype):
    x = torch.randn(shape, device=dev, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last_3d) if dev.type == "cuda" else x


def micro_upsample(pair, dev, dtype, ctx, reps):
    from wan_accel.vae_accel.kernels.subpixel import SubPixelConv, interleave, phase_weights, stacked_weights, windows
    from wan_accel.vae_accel.ops import Seq, TileState, Upsample2x
    from wan_accel.vae_accel.rect import crop

    u, c = pair
    conv, size, have, out = c["op"], u["size"], u["have"], c["out"]
    x = rand(u["x_shape"], dev, dtype)
    engine, sub = Seq([Upsample2x(), conv]), SubPixelConv(conv)
    need = sub.need(out, size)
    xin = crop(x, have, need).contiguous(memory_format=torch.channels_last_3d if ctx.channels_last else torch.contiguous_format)
    module = conv.module
    bias = module.bias.detach().float() if module.bias is not None else None
    w, b = stacked_weights(phase_weights(module.weight.detach()), bias, out.y0, out.x0)
    w, b = w.to(dev, dtype), (b.to(dev, dtype) if b is not None else None)
    w4 = w.squeeze(2)
    if ctx.channels_last:
        w, w4 = w.contiguous(memory_format=torch.channels_last_3d), w4.contiguous(memory_format=torch.channels_last)
    n, cin, t, h, wd = xin.shape
    x4 = xin.transpose(1, 2).reshape(n * t, cin, h, wd)
    grid = F.conv3d(xin, w, b, padding=(0, 1, 1))
    (ys, yshift, my), (xs, xshift, mx) = windows(out.y0, out.y1, need.y0), windows(out.x0, out.x1, need.x0)
    full = torch.empty((n, w.shape[0] // 4, t, 2 * my, 2 * mx), device=dev, dtype=dtype,
                       memory_format=torch.channels_last_3d if ctx.channels_last else torch.contiguous_format)
    up_out = Upsample2x().run(x, have, c["have"], size, TileState(), ctx)
    cout = module.weight.shape[0]
    row = {"op": "upsample2x+conv3x3", "cin": cin, "cout": cout, "frames": t, "in_hw": [h, wd], "out_hw": [out.height, out.width],
           "gflop_engine": round(2 * cout * cin * 9 * t * out.area / 1e9, 2),
           "gflop_subpixel": round(2 * 4 * cout * cin * 4 * t * (h + 1) * (wd + 1) / 1e9, 2)}
    variants = {
        "engine": lambda: engine.run(x, have, out, size, TileState(), ctx),
        "engine_upsample_only": lambda: Upsample2x().run(x, have, c["have"], size, TileState(), ctx),
        "engine_conv_only": lambda: conv.run(up_out, c["have"], out, c["size"], TileState(), ctx),
        "subpixel": lambda: sub.run(x, have, out, size, TileState(), ctx),
        "subpixel_phase_conv3d": lambda: F.conv3d(xin, w, b, padding=(0, 1, 1)),
        "subpixel_phase_conv2d": lambda: F.conv2d(x4, w4, b, padding=1),
        "subpixel_interleave": lambda: interleave(grid, (ys, xs), (yshift, xshift), (my, mx), full),
    }
    row.update({k: time_op(dev, fn, reps) for k, fn in variants.items()})
    return row


def micro_norm(call, dev, dtype, contexts, reps):
    from wan_accel.vae_accel.kernels.fused import norm_params
    from wan_accel.vae_accel.kernels.norm_act import norm_act, norm_act_torch
    from wan_accel.vae_accel.ops import TileState, rms_norm_silu
    from wan_accel.vae_accel.rect import Rect

    norm, out = call["op"], call["out"]
    shape = (call["x_shape"][0], call["x_shape"][1], call["x_shape"][2], out.height, out.width)
    x, h, s = rand(shape, dev, dtype), rand(shape, dev, dtype), rand(shape, dev, dtype) * 1e-3  # h grows slowly over reps
    r = Rect.full((out.height, out.width))
    g, _ = norm_params(norm, contexts["eager"])
    row = {"op": "rms_norm+silu", "channels": shape[1], "frames": shape[2], "hw": [out.height, out.width],
           "gbyte_moved": round(2 * x.numel() * x.element_size() / 1e9, 3)}
    variants = {f"engine_{k}": (lambda c=c: norm.run(x, r, r, (out.height, out.width), TileState(), c)) for k, c in contexts.items()}
    g5 = g.reshape(1, -1, 1, 1, 1)
    variants["engine_rms_norm_silu_eager"] = lambda: rms_norm_silu(x, g5)
    variants["torch_fallback"] = lambda: norm_act_torch(x, g)
    variants["triton"] = lambda: norm_act(x, g)
    for k, c in contexts.items():
        variants[f"add_then_engine_{k}"] = lambda c=c: norm.run(h.add_(s), r, r, (out.height, out.width), TileState(), c)
    variants["triton_fused_add"] = lambda: norm_act(h, g, add=s)
    row.update({k: time_op(dev, fn, reps) for k, fn in variants.items()})
    return row


def micro_norm_conv(pair, dev, dtype, contexts, reps):
    from wan_accel.vae_accel.kernels.fused import NormConv
    from wan_accel.vae_accel.ops import Seq, TileState

    n, c = pair
    norm, conv, have, out, size = n["op"], c["op"], c["have"], c["out"], c["size"]
    x = rand((n["x_shape"][0], n["x_shape"][1], n["x_shape"][2], have.height, have.width), dev, dtype)
    row = {"op": "norm+causal conv", "cin": x.shape[1], "cout": conv.module.weight.shape[0], "frames": x.shape[2],
           "hw": [have.height, have.width]}

    def primed(op, ctx):
        st = TileState()
        op.run(x, have, out, size, st, ctx)  # the first slice: zero head; later ones read the cached frames
        st.commit()
        return lambda: op.run(x, have, out, size, st, ctx)

    variants = {f"engine_{k}": primed(Seq([norm, conv]), ctx) for k, ctx in contexts.items()}
    variants["norm_conv"] = primed(NormConv(norm, conv), contexts["eager"])
    row.update({k: time_op(dev, fn, reps) for k, fn in variants.items()})
    return row


def micro(calls, dev, dtype, reps):
    from wan_accel.vae_accel.runtime import make_context

    cl = dev.type == "cuda"
    contexts = {"eager": make_context(dev, dtype, channels_last=cl, fused_norm=False)}
    if dev.type == "cuda":  # the engine's WAN_ACCEL_FUSED_NORM path: torch.compile'd norm + SiLU
        contexts["compiled"] = make_context(dev, dtype, channels_last=True, fused_norm=True)
    up, norm_conv, norms, _ = pairs(calls)
    shape = lambda c: (c["x_shape"][1], c["x_shape"][2], c["out"].height, c["out"].width)  # noqa: E731
    rows = [micro_upsample(p, dev, dtype, contexts["eager"], reps) for p in up]
    rows += [micro_norm(c, dev, dtype, contexts, reps) for c in dedupe(norms, shape)]
    rows += [micro_norm_conv(p, dev, dtype, contexts, reps) for p in dedupe(norm_conv, lambda p: shape(p[0]))]
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows
