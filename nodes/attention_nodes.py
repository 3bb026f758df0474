"""WanAccelAttention: pick the attention backend per model (ComfyUI V3 node).

The node clones the MODEL and sets ``transformer_options["optimized_attention_override"]`` on the
clone (ComfyUI 0.3.60+ consults it around every attention call). An override already on the model
is chained: whatever this node hands to ``comfy_default`` goes through it.
"""
from __future__ import annotations

import inspect
import logging

from comfy_api.latest import io

from ..attention import (ATTENTION_KINDS, AUTO, COMFY_DEFAULT, REGISTRY, AttentionOverride, Schedule, names,
                         parse_ranges)
from ..attention.backends import statuses
from ..attention.verify import DEFAULT_MAX_REL_ERROR, DEFAULT_MIN_COSINE

OVERRIDE_KEY = "optimized_attention_override"
RUN_HOOK_KEY = "wan_accel_attention"
log = logging.getLogger("wan_accel.attention")

def backend_tooltip() -> str:
    """What each backend is and its state on this machine (probed when the node list is built, cached),
    from the registry: a backend added there shows up here with nothing else to edit."""
    entries = "; ".join(f"{name} [{state}]: {REGISTRY[name].doc}" for name, state in statuses().items())
    return ("Attention kernel for this model; the state on this machine is in brackets. " + entries +
            "; auto: time every usable backend on the first call of each shape and keep the fastest that passes "
            "verification; comfy_default: leave ComfyUI's choice. A backend that is not installed or cannot take "
            "a call hands it to the fallback (logged once per reason; telemetry records on the sampler what ran).")


def states_tooltip() -> str:
    return "State on this machine: " + "; ".join(f"{name} [{state}]" for name, state in statuses().items()) + "."


def setup() -> None:
    """At start-up (once per load), say which backends this machine can run."""
    usable, others = [], []
    for name, state in statuses().items():
        if state == "ready":
            usable.append(name)
        else:
            others.append(f"{name} {state}")
    log.info("wan_accel attention: usable here: %s; the others: %s", ", ".join(usable), "; ".join(others))


def _label(model) -> str:
    inner = getattr(getattr(model, "model", None), "diffusion_model", None)
    return f"{type(inner).__name__ if inner is not None else 'model'}@{id(model) & 0xFFFFFF:06x}"


def comfyui_checks_combo_options() -> bool:
    """Whether this ComfyUI's prompt validator checks a V3 combo's value against its options (newer
    ones do; 0.3.64 checks only V1 list combos). Read from the validator itself; unknown = no."""
    try:
        import execution

        return "Combo.io_type" in inspect.getsource(execution.validate_inputs)
    except Exception:
        return False


COMFYUI_CHECKS_COMBOS = comfyui_checks_combo_options()
CHOICES = {"backend": names(), "fallback": [n for n in names() if n != AUTO], "attention": list(ATTENTION_KINDS)}


class WanAccelAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanAccelAttention",
            display_name="Wan Accel Attention",
            category="wan_accel",
            description="Per-model attention backend with fallback, verification and a step/block schedule. "
                        "Outputs a patched clone; the input model is untouched. Put one on each Wan 2.2 expert "
                        "to give them different backends.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to patch (a clone is patched, not this one)."),
                io.Combo.Input("backend", options=CHOICES["backend"], default="auto", tooltip=backend_tooltip()),
                io.Combo.Input("fallback", options=CHOICES["fallback"], default="sdpa",
                               tooltip="Used for calls the schedule leaves out, and for any call the backend cannot "
                                       "take (package missing, a mask it would ignore, unsupported head dim or "
                                       "dtype, an error, failed verification). comfy_default = ComfyUI's own "
                                       "attention (or an override that was already on the model). " + states_tooltip()),
                io.Boolean.Input("verify", default=True,
                                 tooltip="Compare the first call of each shape against float32 SDPA (on up to 1024 "
                                         "query rows); on a failed check or non-finite output use the fallback for "
                                         "that shape and warn once."),
                io.Float.Input("min_cosine", default=DEFAULT_MIN_COSINE, min=0.0, max=1.0, step=0.0001,
                               tooltip="Verification: the lowest cosine similarity to the float32 reference accepted."),
                io.Float.Input("max_rel_error", default=DEFAULT_MAX_REL_ERROR, min=0.0, max=10.0, step=0.001,
                               tooltip="Verification: the largest relative L2 error to the float32 reference accepted."),
                io.Combo.Input("attention", options=CHOICES["attention"], default="all",
                               tooltip="Which attention calls use the backend: all, self (video tokens to "
                                       "themselves) or cross (to the text/image context). The rest use the fallback."),
                io.String.Input("steps", default="",
                                tooltip="Sampling steps that use the backend, 0-based within this sampler's steps, "
                                        "e.g. '0-3, 10-'. Empty = all. Other steps use the fallback."),
                io.String.Input("blocks", default="",
                                tooltip="Transformer blocks that use the backend (block_index, 0-based), e.g. "
                                        "'0-29' or '0, 39'. Empty = all. Other blocks use the fallback."),
            ],
            outputs=[io.Model.Output(tooltip="A clone of the model that uses the chosen attention.")],
            # the node's id, so telemetry ties what ran back to this node (feature-detected; in 0.3.64+)
            hidden=[io.Hidden.unique_id] if hasattr(io, "Hidden") else [],
        )

    # Named arguments only: with **kwargs ComfyUI skips its own range and combo checks for every
    # input, and it pins a custom error on each input validate_inputs names. Where ComfyUI does not
    # check a V3 combo's value against its options (0.3.64), the combos are checked here too.
    if COMFYUI_CHECKS_COMBOS:
        @classmethod
        def validate_inputs(cls, steps: str = "", blocks: str = "") -> bool | str:
            return range_errors(steps=steps, blocks=blocks) or True
    else:
        @classmethod
        def validate_inputs(cls, backend: str = AUTO, fallback: str = "sdpa", attention: str = "all",
                            steps: str = "", blocks: str = "") -> bool | str:
            return "; ".join(filter(None, (choice_errors(backend=backend, fallback=fallback, attention=attention),
                                           range_errors(steps=steps, blocks=blocks)))) or True

    @classmethod
    def execute(cls, model, backend: str, fallback: str, verify: bool, min_cosine: float, max_rel_error: float,
                attention: str, steps: str, blocks: str) -> io.NodeOutput:
        node_id = getattr(getattr(cls, "hidden", None), "unique_id", None)  # None when called outside a prompt
        return io.NodeOutput(patch_model(model, backend, fallback, verify=verify, attention=attention, steps=steps,
                                         blocks=blocks, min_cosine=min_cosine, max_rel_error=max_rel_error,
                                         node_id=node_id))


def choice_errors(**values: str | None) -> str:
    """'' when each combo value is one of its options, else one line per bad one, naming the input."""
    errors = []
    for name, value in values.items():
        options = CHOICES[name]
        if value is not None and value not in options:  # None: linked, checked when it arrives
            errors.append(f"{name}: {value!r} is not one of {', '.join(options)}")
    return "; ".join(errors)


def range_errors(**specs: str | None) -> str:
    """'' when every range string parses, else one line per bad one, named (ComfyUI shows it on both)."""
    errors = []
    for name, spec in specs.items():
        try:
            parse_ranges(spec)
        except ValueError as exc:
            errors.append(f"{name}: {exc}")
    return "; ".join(errors)


def patch_model(model, backend: str, fallback: str = "sdpa", *, verify: bool = True, attention: str = "all",
                steps: str = "", blocks: str = "", min_cosine: float = DEFAULT_MIN_COSINE,
                max_rel_error: float = DEFAULT_MAX_REL_ERROR, node_id: str | None = None):
    """Clone ``model`` (a ModelPatcher) and put an :class:`AttentionOverride` on the clone."""
    patched = model.clone()  # deep-copies model_options: the input's transformer_options stay as they were
    topts = patched.model_options.setdefault("transformer_options", {})
    previous = topts.get(OVERRIDE_KEY)
    if backend == COMFY_DEFAULT and fallback == COMFY_DEFAULT:
        return patched  # nothing to change
    override = topts[OVERRIDE_KEY] = AttentionOverride(
        backend, fallback, verify=verify, schedule=Schedule(attention, steps, blocks), previous=previous,
        min_cosine=min_cosine, max_rel_error=max_rel_error, label=_label(patched), node_id=node_id)
    add_run_hook(patched, override)
    return patched


def add_run_hook(patched, override: AttentionOverride) -> None:
    """Tell the override when a sampler starts (ComfyUI runs OUTER_SAMPLE wrappers once per sampling
    run), so the backends it serves are reported on each sampler node, not only the first one."""
    import comfy.patcher_extension as patcher_extension

    wrappers = getattr(patcher_extension, "WrappersMP", None)
    if wrappers is None or not hasattr(patched, "add_wrapper_with_key"):
        return

    def new_run(executor, *args, **kwargs):
        override.new_run()
        return executor(*args, **kwargs)

    patched.add_wrapper_with_key(wrappers.OUTER_SAMPLE, RUN_HOOK_KEY, new_run)


NODES: list = [WanAccelAttention]
