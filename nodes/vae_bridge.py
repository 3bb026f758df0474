"""Runs the engine on a ComfyUI ``comfy.sd.VAE``: its device, dtype, memory manager and progress bar."""
from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import logging
from dataclasses import dataclass

import comfy.model_management as mm
import comfy.ops
import comfy.utils
import torch

from ..vae_accel import SUPPORTED_VAES, BadLatent, BadVideo, UnsupportedVAE
from ..vae_accel.decode import decoder_graph
from ..vae_accel.encode import encoder_graph
from ..vae_accel import decode as engine_decode
from ..vae_accel import encode as engine_encode
from ..vae_accel import devices as engine_devices
from ..vae_accel import options
from ..vae_accel.budget import plan_budget
from ..vae_accel.ops import module_weights
from ..vae_accel.run_options import RunOptions
from ..telemetry.phases import phase

log = logging.getLogger("wan_accel")

@dataclass(frozen=True)
class Overrides:
    max_vram_gb: float = 0.0
    tile_size: int = 0  # output pixels
    slice_frames: int = 0  # latent frames
    devices: str = "auto"  # devices.parse_devices: "auto" or CUDA indices such as "0,1"


def unsupported_reason(vae, uses=("decode", "encode")) -> str | None:
    """Why the engine must leave ``vae`` to core for ``uses`` (None: a Wan video VAE it runs exactly).

    Judged on ComfyUI's own description of the VAE first: a VAE whose latents have no frames (an image
    VAE, even one built from Wan's modules, as newer ComfyUI builds the Qwen Image 2.1 VAE from vae2_2)
    or whose compression differs from the module tree's is not ours, whatever its layers look like."""
    model = getattr(vae, "first_stage_model", None)
    if model is None:
        return f"not a ComfyUI VAE ({type(vae).__name__})"
    if getattr(vae, "latent_dim", 3) != 3 or getattr(vae, "not_video", False):
        return f"{type(model).__name__} is an image VAE here (latents without frames)"
    try:
        graphs = [decoder_graph(model) if use == "decode" else encoder_graph(model) for use in uses]
    except UnsupportedVAE as exc:
        return exc.reason
    facts = {"latent channels": getattr(vae, "latent_channels", None),
             "spatial compression": _call(vae, "spacial_compression_decode"),
             "temporal compression": _call(vae, "temporal_compression_decode")}
    for graph in graphs:
        ours = {"latent channels": graph.latent_channels, "spatial compression": graph.space_factor,
                "temporal compression": graph.time_factor}
        for name, value in facts.items():
            if value is not None and value != ours[name]:
                return f"its {name} is {value}, but its module tree is a Wan video VAE with {ours[name]}"
    return None


def _call(vae, method: str):
    fn = getattr(vae, method, None)
    return fn() if callable(fn) else None


def _require_supported(vae, use: str):
    reason = unsupported_reason(vae, (use,))
    if reason:
        raise UnsupportedVAE(reason, f"Wan Accel VAE nodes support {SUPPORTED_VAES}; this VAE is not one: "
                                     f"{reason}. Use core VAE Decode or VAE Encode for it.")
    return decoder_graph(vae) if use == "decode" else encoder_graph(vae)


def _progress():
    bar = comfy.utils.ProgressBar(1)
    return lambda done, total: bar.update_absolute(done, total)


def _start(vae, overrides: Overrides, use: str):
    """The engine graph for ``use`` ("decode" or "encode") once the VAE and the plan inputs pass. The
    nodes' own check runs before the prompt; this one also sees linked values and the VAE's factor."""
    vae.throw_exception_if_invalid()
    graph = _require_supported(vae, use)
    problem = options.plan_input_problem(overrides.max_vram_gb, overrides.tile_size, overrides.slice_frames,
                                         space_factor=graph.space_factor)
    problem = problem or engine_devices.devices_problem(overrides.devices, visible_cuda_devices())
    if problem:
        raise ValueError(problem)
    return graph


def visible_cuda_devices() -> int:
    """How many CUDA devices this ComfyUI can spread a VAE over (none when it runs on the CPU)."""
    return engine_devices.visible_cuda_devices() if mm.get_torch_device().type == "cuda" else 0


def _load(vae) -> None:
    """Load the VAE as ComfyUI loads a model for a call that needs no memory of its own. Core asks for
    its whole estimate (memory_used_decode), which unloads the diffusion model the next run needs; our
    plans never use more than is free (a user's budget is a cap, not a reservation, and an OOM only
    shrinks the plan), so nothing is evicted for them."""
    mm.load_models_gpu([vae.patcher], memory_required=0, force_full_load=getattr(vae, "disable_offload", False))


def _run_options(vae, overrides: Overrides, graph, kind: str, shape) -> RunOptions:
    """How the engine runs a ``kind`` call on an input of ``shape`` (core's layout), once the VAE is loaded."""
    return RunOptions(device=vae.device, dtype=vae.vae_dtype, budget_bytes=budget(vae, kind, shape, overrides.max_vram_gb),
                      tile=options.tile_latent(overrides.tile_size, graph.space_factor),
                      slice_len=overrides.slice_frames or None, progress=_progress(), weights=comfy_weights,
                      devices=overrides.devices)


@contextlib.contextmanager
def comfy_weights(module, device, dtype):
    """The engine's weight source (ops.WeightSource) through ComfyUI's own cast, comfy.ops.cast_bias_weight,
    as ComfyUI's layers fetch theirs: the patcher's weight patches apply, lowvram-offloaded and Dynamic
    VRAM weights stream in under ComfyUI's accounting, and the copy is given back (uncast) after its one
    use, so the engine holds no weights of its own. Modules that are not ComfyUI ops are read as they are."""
    if not hasattr(module, "weight_function"):
        with module_weights(module, device, dtype) as held:
            yield held
        return
    uncast = getattr(comfy.ops, "uncast_bias_weight", None)  # came with cast's offloadable=True
    if uncast is not None:
        weight, bias, handle = comfy.ops.cast_bias_weight(module, dtype=dtype, device=device, bias_dtype=dtype,
                                                          offloadable=True)
        try:
            yield weight, bias
        finally:
            uncast(module, weight, bias, handle)
    else:  # ComfyUI 0.3.64: the cast has no hand-back
        yield comfy.ops.cast_bias_weight(module, dtype=dtype, device=device, bias_dtype=dtype)


def budget(vae, kind: str, shape, max_vram_gb: float = 0.0) -> int | None:
    """The engine's budget on ComfyUI's terms: budget.plan_budget, or the user's ``max_vram_gb`` capped
    at what is free. Free memory is what the VAE's patcher can reclaim (with Dynamic VRAM that includes
    other models' weights it can stream out again, which ComfyUI's global free memory counts as used);
    stock is what ComfyUI's own VAE would reserve for this call. Off CUDA: the user's budget or none."""
    chosen = options.budget_bytes(max_vram_gb)
    device = vae.device
    if getattr(device, "type", None) != "cuda":
        return chosen
    patcher_free = getattr(vae.patcher, "get_free_memory", None)
    free = patcher_free(device) if callable(patcher_free) else mm.get_free_memory(device)
    if chosen:
        return min(chosen, int(free))
    estimate = getattr(vae, f"memory_used_{kind}", None)
    stock = estimate(tuple(shape), vae.vae_dtype) if callable(estimate) else None
    return plan_budget(kind, free, stock)


def encode(vae, pixels, overrides: Overrides):
    """What ``comfy.sd.VAE.encode`` returns for Wan video frames, computed by the engine: frames (T, H, W, C)
    or (B, T, H, W, C) in [0, 1] go through core's own cropping and ``process_input``; the latent comes
    back on the intermediate device in ComfyUI's intermediate dtype, through ``format_encoded`` if set."""
    graph = _start(vae, overrides, "encode")
    # the phases around the engine's own say where the rest of the node's time goes (telemetry)
    with phase("vae.input"):
        video = vae.vae_encode_crop_pixels(pixels).movedim(-1, 1)
        if video.dim() < 5:  # frames of one video, as core reads a 4-D batch for a video VAE
            video = video.movedim(1, 0).unsqueeze(0)
        video = vae.process_input(video)
    with phase("vae.load"):
        _load(vae)
    latent = engine_encode(vae.first_stage_model, video, _run_options(vae, overrides, graph, "encode", video.shape),
                           layout="raw")
    with phase("vae.output"):
        latent = latent.to(device=vae.output_device, dtype=_output_dtype(vae))
        format_encoded = getattr(vae, "format_encoded", None)
        return format_encoded(latent) if format_encoded is not None else latent


def decode(vae, latent, overrides: Overrides):
    """What ``comfy.sd.VAE.decode`` returns for a Wan video latent, computed by the engine: (B, T, H, W, C)
    on the intermediate device in ComfyUI's intermediate dtype, through the VAE's own ``process_output``."""
    graph = _start(vae, overrides, "decode")
    with phase("vae.load"):
        _load(vae)
    raw = engine_decode(vae.first_stage_model, latent, _run_options(vae, overrides, graph, "decode", latent.shape),
                        layout="raw")
    with phase("vae.output"):
        pixels = vae.process_output(raw.to(device=vae.output_device, dtype=_output_dtype(vae)))
        return pixels.movedim(1, -1)


def _output_dtype(vae) -> torch.dtype:
    """ComfyUI's intermediate dtype (0.33: float16 with --fp16-intermediates); float32 where it has none."""
    method = getattr(vae, "vae_output_dtype", None)
    return method() if callable(method) else torch.float32


# --- the patched VAE ------------------------------------------------------------------------------
# A patched VAE is a shallow copy whose class is a subclass of its own: methods on the class (not
# closures on the instance) hold no reference to any VAE, and everything else (weights, patcher,
# process_output, ...) is shared. Classes live as long as the program, so a plain dict caches them.
_patched_classes: dict[type, type] = {}
_told: set[tuple] = set()


def patch(vae, overrides: Overrides):
    """``vae`` with decode and encode routed through the engine (a Wan video VAE: see unsupported_reason)."""
    patched = copy.copy(vae)
    patched.__class__ = _patched_class(type(vae))
    patched.wan_accel_overrides = overrides
    return patched


def _patched_class(cls: type) -> type:
    base = getattr(cls, "wan_accel_base", cls)  # patching a patched VAE again replaces its overrides only
    if base not in _patched_classes:
        _patched_classes[base] = type(f"WanAccel{base.__name__}", (base,), {
            "__doc__": f"{base.__name__} whose decode and encode run the Wan Accel engine.",
            "__module__": __name__,
            "wan_accel_base": base,
            "decode": _patched_method(base, "decode", decode),
            "encode": _patched_method(base, "encode", encode),
        })
    return _patched_classes[base]


def _patched_method(base: type, name: str, ours):
    """Core's method ``name`` of ``base``, with the engine taking the calls it can honour exactly.

    Core's signature is read here, at patch time: a call binds to it as to core's (wrong arguments fail
    the same way), and a call that sets any argument past the first to other than its default (vae_options,
    not_video, whatever a newer ComfyUI adds) goes to core's own method, said once in the log."""
    core = getattr(base, name)
    signature = inspect.signature(core)
    first = list(signature.parameters)[1]

    @functools.wraps(core)
    def method(self, *args, **kwargs):
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError:  # core raises it, in its own words
            return getattr(base, name)(self, *args, **kwargs)
        extra = _non_default(signature, bound, skip=("self", first))
        if extra:
            _tell_once(base, name, f"{', '.join(extra)} set", "")
            return getattr(base, name)(self, *args, **kwargs)
        try:
            return ours(self, bound.arguments[first], self.wan_accel_overrides)
        except (BadLatent, BadVideo) as exc:  # raised by the engine's checks, before any work
            _tell_once(base, name, "an input the engine does not take", f" ({exc})")
            return getattr(base, name)(self, *args, **kwargs)

    return method


def _non_default(signature: inspect.Signature, bound: inspect.BoundArguments, skip) -> list[str]:
    names = []
    for param_name, value in bound.arguments.items():
        param = signature.parameters[param_name]
        if param_name in skip:
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            if value:
                names.append(param_name)
        elif param.default is param.empty or not _same(value, param.default):
            names.append(param_name)
    return names


def _same(value, default) -> bool:
    if value is default:
        return True
    try:
        return type(value) is type(default) and bool(value == default)
    except Exception:  # a tensor or anything without a plain truth value: not the default
        return False


def _tell_once(base: type, name: str, why: str, detail: str) -> None:
    key = (base, name, why)
    if key not in _told:
        _told.add(key)
        log.info("wan_accel: the patched VAE leaves %s calls with %s to ComfyUI's own %s.%s%s (logged once)",
                 name, why, base.__name__, name, detail)
