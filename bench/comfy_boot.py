"""Start ComfyUI inside a bench process the way its ``main.py`` does, minus the server.

Order matters and follows main.py (0.3.64 to 0.33, by feature, not by version): parse ComfyUI's own
command line (``--cpu``, ``--disable-dynamic-vram``), ``import cuda_malloc`` before torch touches CUDA
(it picks the cudaMallocAsync allocator on cu130 torch), initialise comfy-aimdo (Dynamic VRAM) where the
release has it and it is on, then ComfyUI's modules; then ``init_devices`` and the dynamic model patcher,
as main.py does after its imports. The card emulation (``card.report_total``) goes in just before
``comfy.model_management`` reads the device total.
"""
from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import sys
from pathlib import Path


def before_torch(argv: list[str]) -> None:
    """main.py's allocator choice, for a bench script that boots ComfyUI later: call it after importing
    this module and before anything imports torch (torch >= 2.11 reads PYTORCH_CUDA_ALLOC_CONF when it
    loads, so ``cuda_malloc`` picking cudaMallocAsync after that fails the first CUDA call). Reads
    ``--comfy DIR`` from the script's ``argv``; does nothing without it or with ``--cpu-check``."""
    comfy_dir = None
    for i, arg in enumerate(argv):
        if arg == "--comfy" and i + 1 < len(argv):
            comfy_dir = argv[i + 1]
        elif arg.startswith("--comfy="):
            comfy_dir = arg.split("=", 1)[1]
    if comfy_dir is None or "--cpu-check" in argv or "torch" in sys.modules:
        return
    _comfy_args(comfy_dir, ["main.py"])
    _cuda_malloc()


def _comfy_args(comfy_dir: str, argv: list[str]):
    root = str(Path(comfy_dir).resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    saved_argv, sys.argv = sys.argv, argv
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        from comfy.cli_args import args
    finally:
        sys.argv = saved_argv
    return args


def _cuda_malloc() -> None:
    if "backend:" in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""):
        return  # chosen already (a parent bench process did it): cuda_malloc would append a second one
    if importlib.util.find_spec("cuda_malloc") is not None:
        import cuda_malloc  # noqa: F401  (sets PYTORCH_CUDA_ALLOC_CONF as main.py does, before torch loads)


def boot(comfy_dir: str, *, cpu: bool, dynamic_vram: bool = True, card_total_bytes: int | None = None,
         extra_argv: tuple = ()) -> dict:
    """Returns what was set up: {"version", "dynamic_vram" (True/False/None = not in this release),
    "cuda_malloc", "argv"}; afterwards ``import nodes, execution, folder_paths`` work."""
    argv = ["main.py", *extra_argv] + (["--cpu"] if cpu else [])
    args = _comfy_args(comfy_dir, argv)
    args.cpu = args.cpu or cpu  # already parsed when something imported comfy.cli_args first
    has_dynamic = hasattr(args, "disable_dynamic_vram")
    if has_dynamic and not dynamic_vram:
        args.disable_dynamic_vram = True
    info = {"argv": argv, "dynamic_vram": None}
    if "cuda_malloc" in sys.modules or "torch" not in sys.modules:
        _cuda_malloc()
    else:  # torch >= 2.11 reads the allocator setting when it loads: choosing one now would crash its first CUDA call
        info["cuda_malloc"] = "skipped: torch was imported before comfy_boot.before_torch(); native allocator"
    info["alloc_conf"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
    aimdo = _aimdo_init(args) if has_dynamic else None

    import torch

    if card_total_bytes and not cpu:
        from card import report_total

        report_total(torch, card_total_bytes)
    import comfy.model_management as mm
    import comfy.utils
    import execution  # noqa: F401
    import nodes

    if has_dynamic:
        info["dynamic_vram"] = _aimdo_devices(aimdo, args, mm) if aimdo is not None else False
    _progress_hook(comfy.utils)
    asyncio.run(nodes.init_builtin_extra_nodes())
    info["version"] = _version()
    info["torch_alloc_backend"] = (torch.cuda.get_allocator_backend() if not cpu and torch.cuda.is_available()
                                   else None)
    return info


def _aimdo_init(args):
    """main.py, before torch: load comfy-aimdo when Dynamic VRAM is on (None when off or missing)."""
    from comfy.cli_args import enables_dynamic_vram

    if not enables_dynamic_vram():
        return None
    try:
        import comfy_aimdo.control as aimdo
    except ImportError:
        logging.warning("comfy-aimdo is not installed: Dynamic VRAM off")
        return None
    headroom = None if args.reserve_vram is None else int(args.reserve_vram * 1024**3)
    try:
        aimdo.init(simple_vram_headroom=headroom, nvml_pressure=not args.disable_nvml_pressure)
    except TypeError:  # older comfy-aimdo protocols, as main.py falls back
        try:
            aimdo.init(simple_vram_headroom=headroom)
        except TypeError:
            aimdo.init()
    return aimdo


def _aimdo_devices(aimdo, args, mm) -> bool:
    """main.py, after its imports: hand the devices to comfy-aimdo and switch to the dynamic patcher."""
    import comfy.memory_management
    import comfy.model_patcher

    if not mm.is_nvidia() or mm.torch_version_numeric < (2, 8):
        return False
    try:
        ok = aimdo.init_devices((d.index, int(args.vram_headroom * 1024**3)) for d in mm.get_all_torch_devices())
    except TypeError:
        ok = aimdo.init_devices(d.index for d in mm.get_all_torch_devices())
    if ok:
        comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
        comfy.memory_management.aimdo_enabled = True
    return bool(ok)


def _progress_hook(comfy_utils) -> None:
    """What main.py's progress hook feeds the progress registry (telemetry's per-step times read it)."""
    from comfy_execution.progress import get_progress_state
    from comfy_execution.utils import get_executing_context

    def hook(value, total, preview_image, prompt_id=None, node_id=None):
        ctx = get_executing_context()
        if node_id is None and ctx is not None:
            node_id = ctx.node_id
        if node_id is not None:
            get_progress_state().update_progress(node_id, value, total, None)

    comfy_utils.set_progress_bar_global_hook(hook)


def _version() -> str | None:
    try:
        import comfyui_version

        return comfyui_version.__version__
    except ImportError:
        return None
