"""CPU tests of the run store and the HTTP route logic (ids validated, nothing outside the folder)."""
from __future__ import annotations

import csv
import io
import json
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wan_accel.telemetry.recorder import Recorder
from wan_accel.telemetry.run_ids import RunIds
from wan_accel.telemetry.store import RunStore, handle_get, handle_list, run_to_csv, valid_run_id


LETTERS_ID = "20250101-000000-0123abcd"
DIGITS_ID = "20250101-000000-01234567"  # a digit-only random part is a valid id like any other


def _run(store=None, error=None, run_id=None):
    rec = Recorder(store=store)
    rec.begin_run("prompt-1")
    if run_id is not None:
        rec.run["id"] = run_id
    rec.node_start("1", "EmptyImage")
    rec.node_finish("1")
    rec.node_finish("2", "SaveImage")  # cached
    rec.node_start("3", "Bad")
    return rec.end_run(status="error" if error else "success",
                       error={"node_id": "3", "type": "X", "message": error} if error else None)


def test_run_saved_as_json_and_csv(tmp_path):
    store = RunStore(lambda: tmp_path)
    run = _run(store)
    folder = tmp_path / "wan_accel" / "telemetry"
    assert sorted(p.name for p in folder.iterdir()) == [f"{run['id']}.csv", f"{run['id']}.json"]
    assert json.loads((folder / f"{run['id']}.json").read_text())["nodes"] == json.loads(json.dumps(run["nodes"]))
    rows = list(csv.DictReader(io.StringIO((folder / f"{run['id']}.csv").read_text())))
    assert [r["node_id"] for r in rows] == ["1", "2", "3"]
    assert rows[1]["cached"] == "True" and rows[0]["type"] == "EmptyImage"
    assert {"model_moves_s", "lora_patch_s", "dynamic_load", "step_unit", "advice"} <= set(rows[0])
    runs, unreadable = store.list()
    assert runs[0]["id"] == run["id"] and runs[0]["prompt_id"] == "prompt-1" and unreadable == 0


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_run_files_get_the_mode_comfyui_outputs_get(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        run = _run(RunStore(tmp_path))
    finally:
        os.umask(old)
    folder = tmp_path / "wan_accel" / "telemetry"
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == {
        f"{run['id']}.json": mode, f"{run['id']}.csv": mode}


def test_unreadable_run_files_are_counted_not_hidden(tmp_path):
    store = RunStore(tmp_path)
    good = _run(store, run_id=LETTERS_ID)
    (tmp_path / "wan_accel" / "telemetry" / f"{DIGITS_ID}.json").write_text("{half a file")
    status, payload = handle_list(store, {})
    assert status == 200 and [r["id"] for r in payload["runs"]] == [good["id"]] and payload["unreadable"] == 1


def test_csv_cells_cannot_become_formulas():
    run = _run(error="=cmd|' /C calc'!A0")
    text = run_to_csv(run)
    row = list(csv.DictReader(io.StringIO(text)))[2]
    assert row["error"].startswith("'=")


def test_run_ids_are_valid_and_sortable():
    ids = RunIds()
    a, b = ids.new(1_700_000_000), ids.new(1_700_000_001)
    assert valid_run_id(a) and valid_run_id(b) and a[:15] < b[:15] and a.startswith("20231114-221320-")


def test_run_ids_of_one_second_sort_in_creation_order():
    # Runs of cached prompts take milliseconds: "newest first" (the run list, A/B defaults, pruning)
    # must not depend on random hex when several runs start in the same second.
    maker = RunIds()
    ids = [maker.new(1_700_000_000.25) for _ in range(200)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(valid_run_id(i) for i in ids)
    assert maker.new(1_700_000_000.5) > ids[-1]


def test_store_lists_runs_of_one_second_newest_first(tmp_path):
    store = RunStore(tmp_path)
    ids = [_run(store)["id"] for _ in range(12)]
    assert [r["id"] for r in store.list(50)[0]] == ids[::-1]


def test_routes_validate_ids_and_formats(tmp_path):
    store = RunStore(tmp_path)
    run = _run(store, run_id=LETTERS_ID)
    _run(store, run_id=DIGITS_ID)
    assert handle_get(store, LETTERS_ID)[0] == 200 and handle_get(store, DIGITS_ID)[0] == 200
    status, ctype, body = handle_get(store, run["id"], "csv")
    assert status == 200 and ctype == "text/csv" and body.startswith("run_id,")
    for bad in ("../../etc/passwd", "..", "", "a" * 300, LETTERS_ID.upper(), run["id"] + "/x", run["id"] + "\x00",
                run["id"] + ".json", "/" + run["id"], "20250101-000000-0123abc", " " + run["id"], run["id"] + "\n",
                "２０２５０１０１-００００００-0123abcd", "٢٠٢٥٠١٠١-000000-0123abcd"):  # non-ASCII digits
        assert handle_get(store, bad)[0] == 400, bad
    assert handle_get(store, run["id"], "../json")[0] == 400
    assert handle_get(store, run["id"], "html")[0] == 400
    assert handle_get(store, "20000101-000000-00000000")[0] == 404
    assert handle_list(store, {})[0] == 200
    assert [r["id"] for r in handle_list(store, {"limit": "5"})[1]["runs"]] == [LETTERS_ID, DIGITS_ID]
    for bad in ("0", "-1", "100000", "x", "1.5", ""):
        assert handle_list(store, {"limit": bad})[0] == 400, bad


CANONICAL_ID = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{8}", re.ASCII)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), st.from_regex(r"\A\d{8}-\d{6}-[0-9a-fA-F]{8}\Z")))
def test_arbitrary_ids_never_touch_files_outside(run_id):
    store = RunStore("/nonexistent-root-for-test")
    status, _, _ = handle_get(store, run_id)
    # 404 (looked up inside the folder) only for an ASCII id of the documented form, else 400
    assert status == (404 if CANONICAL_ID.fullmatch(run_id) else 400), run_id


def test_save_rejects_a_forged_id_and_writes_nothing(tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(ValueError):
        store.save({"id": "../../escape", "nodes": []})
    assert not any(tmp_path.rglob("*escape*"))
    assert not (tmp_path.parent / "escape.json").exists()


def test_store_keeps_the_newest_runs(tmp_path):
    store = RunStore(tmp_path, keep=3)
    ids = []
    for i in range(5):
        rid = f"2026010{i + 1}-000000-0000000{i}"
        ids.append(rid)
        store.save({"id": rid, "nodes": [], "totals": {}})
    left = sorted(p.name for p in (tmp_path / "wan_accel" / "telemetry").iterdir())
    assert left == sorted(f"{r}.{e}" for r in ids[2:] for e in ("json", "csv"))


def test_failing_store_does_not_fail_the_run(tmp_path):
    class Broken(RunStore):
        def save(self, run):
            raise OSError("disk full")

    run = _run(Broken(tmp_path))
    assert run["status"] == "success" and run["nodes"]


def test_output_folder_asked_for_on_each_save(tmp_path):
    where = {"dir": tmp_path / "a"}
    store = RunStore(lambda: where["dir"])
    _run(store)
    where["dir"] = tmp_path / "b"
    _run(store)
    assert len(os.listdir(tmp_path / "a" / "wan_accel" / "telemetry")) == 2
    assert len(os.listdir(tmp_path / "b" / "wan_accel" / "telemetry")) == 2
