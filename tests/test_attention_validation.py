"""WanAccelAttention's inputs are validated by ComfyUI itself, before anything loads or runs.

Through ComfyUI's own ``execution.validate_prompt`` (in process, any supported version) and through
a real server's ``/prompt`` (HTTP 400): an unknown backend, an out-of-range threshold or a bad
step/block range is refused with the error on the input that is wrong. Skipped without COMFYUI_PATH.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from comfy_support import REPO, comfy_server, load_our_nodes
from test_attention_comfy import graph_node


GOOD = {"backend": "auto", "fallback": "sdpa", "verify": True, "min_cosine": 0.999, "max_rel_error": 0.05,
        "attention": "all", "steps": "0-3, 10-", "blocks": ""}


def prompt_with(source: str = "WanAccelTestModelSource", sink: str = "WanAccelTestModelSink", **widgets) -> dict:
    inputs = {"model": ["1", 0], **GOOD, **widgets}
    return {"1": {"class_type": source, "inputs": {}},
            "2": {"class_type": "WanAccelAttention", "inputs": inputs},
            "3": {"class_type": sink, "inputs": {"model": ["2", 0]}}}


@pytest.fixture(scope="module")
def validate(comfyui):
    mappings = load_our_nodes()
    mappings["WanAccelTestModelSource"] = graph_node("WanAccelTestModelSource", ("MODEL",))
    mappings["WanAccelTestModelSink"] = graph_node("WanAccelTestModelSink", takes={"model": ("MODEL",)})
    import execution

    def run(prompt: dict) -> tuple[bool, dict]:
        valid, _error, _outputs, node_errors = asyncio.run(execution.validate_prompt("test", prompt, None))
        return valid, node_errors

    run.node_class = mappings["WanAccelAttention"]
    yield run
    del mappings["WanAccelTestModelSource"], mappings["WanAccelTestModelSink"]


def errors_on(node_errors: dict, node_id: str = "2") -> list[tuple[str, str, str]]:
    """(error type, input name, details) of each error ComfyUI pinned on ``node_id``."""
    return [(e["type"], e.get("extra_info", {}).get("input_name"), e.get("details", ""))
            for e in node_errors.get(node_id, {}).get("errors", [])]


def test_a_good_prompt_validates(validate):
    valid, node_errors = validate(prompt_with())
    assert valid is True and node_errors == {}


@pytest.mark.parametrize("widget,value,error_type", [
    ("min_cosine", 1.5, "value_bigger_than_max"),
    ("max_rel_error", -0.1, "value_smaller_than_min"),
    ("min_cosine", -0.5, "value_smaller_than_min"),
])
def test_thresholds_are_checked_by_comfyui_on_the_right_input(validate, widget, value, error_type):
    valid, node_errors = validate(prompt_with(**{widget: value}))
    assert valid is False
    assert {(t, name) for t, name, _ in errors_on(node_errors)} == {(error_type, widget)}


@pytest.mark.parametrize("widget,value", [("backend", "sage_v9"), ("fallback", "auto"), ("attention", "both")])
def test_a_bad_choice_is_refused_on_its_input(validate, widget, value):
    """ComfyUI checks a V3 combo's value itself where it can (pinned on exactly that input); where it
    cannot (0.3.64), the node's validate_inputs does, and its message names the input."""
    valid, node_errors = validate(prompt_with(**{widget: value}))
    assert valid is False
    errors = errors_on(node_errors)
    node_module = sys.modules[validate.node_class.__module__]
    if node_module.COMFYUI_CHECKS_COMBOS:
        assert {(t, name) for t, name, _ in errors} == {("value_not_in_list", widget)}
    else:
        assert errors and all(t == "custom_validation_failed" for t, _n, _d in errors)
        assert widget in {name for _t, name, _d in errors}
        assert all(f"{widget}: {value!r} is not one of" in d for _t, _n, d in errors), errors


@pytest.mark.parametrize("widget", ["steps", "blocks"])
def test_a_bad_range_is_refused_naming_the_input(validate, widget):
    valid, node_errors = validate(prompt_with(**{widget: "3-1"}))
    assert valid is False
    errors = errors_on(node_errors)
    # ComfyUI pins a custom validation error on each input validate_inputs names: steps and blocks
    # (and the combos where ComfyUI cannot check them), never on the model or the thresholds
    named = {"steps", "blocks"}
    if not sys.modules[validate.node_class.__module__].COMFYUI_CHECKS_COMBOS:
        named |= {"backend", "fallback", "attention"}
    assert errors and widget in {name for _t, name, _d in errors} <= named
    assert all(t == "custom_validation_failed" and f"{widget}: empty range '3-1'" in d for t, _n, d in errors), errors


def test_two_bad_ranges_both_named(validate):
    valid, node_errors = validate(prompt_with(steps="x", blocks="2-1"))
    assert valid is False
    details = " ".join(d for _t, _n, d in errors_on(node_errors))
    assert "steps: bad range 'x'" in details and "blocks: empty range '2-1'" in details


def test_server_answers_400_before_loading_anything(comfyui):
    """A real ``main.py``: a bad prompt gets HTTP 400 with the error on the right input; the loader never ran."""
    pytest.importorskip("yaml", reason="ComfyUI reads --extra-model-paths-config with PyYAML")
    work = Path(tempfile.mkdtemp(prefix="wan_accel_validate_"))
    try:
        # our package from an extra custom_nodes folder (no link into the ComfyUI checkout); a
        # diffusion_models folder whose one file makes UNETLoader's name valid (it is never read)
        (work / "custom_nodes").mkdir()
        (work / "custom_nodes" / "comfyui-wan-accel").symlink_to(REPO, target_is_directory=True)
        (work / "models" / "diffusion_models").mkdir(parents=True)
        (work / "models" / "diffusion_models" / "never_loaded.safetensors").write_bytes(b"")
        (work / "extra_model_paths.yaml").write_text(
            f"wan_accel_validate:\n    base_path: {work / 'models'}\n    diffusion_models: diffusion_models\n"
            f"    custom_nodes: {work / 'custom_nodes'}\n")
        with comfy_server(comfyui, work, ["--extra-model-paths-config", str(work / "extra_model_paths.yaml")]) as srv:
            loader = {"class_type": "UNETLoader", "inputs": {"unet_name": "never_loaded.safetensors",
                                                            "weight_dtype": "default"}}
            for widget, value, input_name in (("min_cosine", 7.0, "min_cosine"), ("backend", "nope", "backend"),
                                              ("steps", "3-1", "steps")):
                prompt = prompt_with(sink="ModelSave", **{widget: value})
                prompt["1"] = loader
                prompt["3"]["inputs"]["filename_prefix"] = "wan_accel_never_saved"
                req = urllib.request.Request(srv["base"] + "/prompt", data=json.dumps({"prompt": prompt}).encode(),
                                             headers={"Content-Type": "application/json"})
                with pytest.raises(urllib.error.HTTPError) as answer:
                    urllib.request.urlopen(req, timeout=30)
                assert answer.value.code == 400
                body = json.loads(answer.value.read())
                names = {e["extra_info"].get("input_name") for e in body["node_errors"]["2"]["errors"]}
                assert input_name in names and "model" not in names, body
                assert set(body["node_errors"]) == {"2"}, body  # the loader and the sink are fine
            with urllib.request.urlopen(srv["base"] + "/history", timeout=30) as res:
                assert json.loads(res.read()) == {}, "a refused prompt must not be queued or run"
    finally:
        shutil.rmtree(work, ignore_errors=True)
