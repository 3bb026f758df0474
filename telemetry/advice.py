"""One-line findings with the fix the user can apply, for the time a node lost outside our engines
(model loads, swaps, partial loads, LoRA patching, weights streamed by Dynamic VRAM) or to ComfyUI's choice
of attention kernel (FlashAttention-2 first where cuDNN is faster). Pure: from a
node record and the run's wall seconds; the overlay's hover card and the summary panel show them."""
from __future__ import annotations

MIN_SECONDS = 0.5  # below this (or below MIN_SHARE of the run) a cost is not worth a line
MIN_SHARE = 0.02
STREAMED_SHARE = 0.05  # a dynamic model with more than this share of it never resident was streamed


def size_text(mb: float | None) -> str:
    mb = mb or 0.0
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def seconds_text(s: float) -> str:
    return f"{s:.1f} s" if s >= 1 else f"{s * 1000:.0f} ms"


def _names(entries) -> str:
    names = sorted({e.get("name") or "model" for e in entries or ()})
    return ", ".join(names)


# the attention kernels of ours that are not PyTorch's own pick (which ComfyUI 0.33 skews, see below)
PINNED_KERNELS = ("sdpa_cudnn", "triton_q8", "sage", "cudnn_fp8", "kitchen", "flash", "xformers")


def node_advice(rec: dict, wall: float, sdpa_flash_first: str | None = None) -> list[dict]:
    """Findings for one node record: ``[{"kind", "seconds"?, "text"}]``, worst first as they come.
    ``sdpa_flash_first``: the run header's note that ComfyUI runs SDPA with FlashAttention-2 first on a GPU
    where cuDNN is faster (nodes/sdpa_priority.py)."""
    if rec.get("cached"):
        return []

    def significant(s):
        return bool(s) and s >= MIN_SECONDS and (wall <= 0 or s >= MIN_SHARE * wall)

    out = []
    for m in rec.get("partial_models") or ():
        out.append({"kind": "partial_load", "mb": m.get("offloaded_mb"), "text": (
            f"partial load: {size_text(m.get('offloaded_mb'))} of {m.get('name')} stayed in RAM and is copied to "
            "the GPU every step; free VRAM (unload models the prompt no longer needs, lower the resolution or "
            "frame count, close other GPU programs) or use a smaller quantisation of it (fp8, GGUF)")})
    for m in rec.get("models_resident") or ():
        size, peak = m.get("size_mb") or 0, m.get("peak_mb") or 0
        if m.get("dynamic") and m.get("used") and size and size - peak > STREAMED_SHARE * size:
            out.append({"kind": "dynamic_streamed", "mb": round(size - peak, 1), "text": (
                f"Dynamic VRAM: at most {size_text(peak)} of {m.get('name')}'s {size_text(size)} was in VRAM; the "
                "rest was streamed from RAM as the steps ran; free VRAM or use a smaller quantisation to keep it resident")})
    moves = rec.get("model_moves_s")
    if significant(moves):
        if rec.get("model_swap"):
            text = (f"model swap: {seconds_text(moves)} moving models ({_names(rec.get('models_unloaded'))} out, "
                    f"{_names(rec.get('models_loaded')) or 'the next'} in); they do not fit in VRAM together: a "
                    "smaller quantisation of them lets both stay loaded")
        else:
            text = (f"model load: {seconds_text(moves)} moving {_names(rec.get('models_loaded')) or 'a model'} into "
                    "VRAM, paid again whenever another model pushes it out: keep VRAM free for it, or use a smaller "
                    "quantisation (less to move)")
        out.append({"kind": "model_swap" if rec.get("model_swap") else "model_load", "seconds": moves, "text": text})
    # GPU seconds where they were measured: on a GPU the host's seconds in the patch are no measure of
    # its cost (a full launch queue makes the call wait for the steps' own kernels)
    gpu = rec.get("lora_patch_gpu_s") is not None
    on_the_fly = rec.get("lora_patch_steps_gpu_s" if gpu else "lora_patch_steps_s")
    unit = " of GPU time" if gpu else ""
    if significant(on_the_fly):
        if rec.get("dynamic_load"):
            why, fix = "the model uses Dynamic VRAM", ("merge the LoRA into the model file, or start ComfyUI with "
                                                       "--disable-dynamic-vram if the model fits in VRAM")
        else:
            why, fix = "the model is partially loaded", "merge the LoRA into the model file, or free VRAM so it loads fully"
        out.append({"kind": "lora_steps", "seconds": on_the_fly, "text": (
            f"LoRA on the fly: {seconds_text(on_the_fly)}{unit} patching LoRA weights during the steps because "
            f"{why}; {fix}")})
    at_load = (rec.get("lora_patch_gpu_s" if gpu else "lora_patch_s") or 0) - (on_the_fly or 0)
    if significant(at_load):
        out.append({"kind": "lora_load", "seconds": round(at_load, 4), "text": (
            f"LoRA patching: {seconds_text(at_load)}{unit} applying LoRA weights while loading the model, again on "
            "every reload: avoid model swaps, or merge the LoRA into the model file")})
    if sdpa_flash_first and "Sampler" in str(rec.get("type") or "") and rec.get("status") != "error":
        ran = {str(a.get("backend") or "") for a in rec.get("attention") or ()}
        if not any(b.startswith(PINNED_KERNELS) for b in ran):
            out.append({"kind": "attention_kernel", "text": (
                f"attention: this ComfyUI runs PyTorch's attention with FlashAttention-2 first, and on this GPU "
                f"({sdpa_flash_first}) cuDNN's kernel is faster (H200, Wan 14B shape: 247 ms against 393 ms per "
                "call); put a Wan Accel Attention node on the model with backend auto or sdpa_cudnn")})
    return out
