"""Counts of a pytest junit XML file for the CI summary: "N passed, N failed, N errors, N skipped".

``--comfyui WORD``: the suite runs against ComfyUI, so its integration tests (those using the ``comfyui``
fixture; tests/conftest.py marks them with the property uses_comfyui) must run: one that skips for a
reason without WORD is listed and makes the exit status 1, and so does a suite in which none passed.
Exit 1 as well when the file is missing or holds no tests (the run broke before pytest wrote it).
Tests that skip for other reasons (a GPU-only test on this CPU machine) are counted, not judged, and so are
integration tests that skip because the release under test lacks what they check (the reason says "this
ComfyUI ...": a feature found missing by detection, the right outcome on an older or newer release).
"""
from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET

FEATURE_SKIP = "this ComfyUI"  # the start of every feature-detection skip reason in tests/


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("xml")
    ap.add_argument("--comfyui", metavar="WORD", default=None)
    a = ap.parse_args(argv)
    try:
        root = ET.parse(a.xml).getroot()
    except (OSError, ET.ParseError) as exc:
        print(f"no results ({exc})")
        return 1
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    integration_passed = 0
    bad_skips = []
    for case in root.iter("testcase"):
        kinds = {child.tag for child in case}
        integration = any(p.get("name") == "uses_comfyui" for p in case.iter("property"))
        if "failure" in kinds:
            counts["failed"] += 1
        elif "error" in kinds:
            counts["errors"] += 1
        elif "skipped" in kinds:
            counts["skipped"] += 1
            reason = case.find("skipped").get("message", "")
            if a.comfyui is not None and integration and a.comfyui not in reason and FEATURE_SKIP not in reason:
                bad_skips.append(f"{case.get('classname')}::{case.get('name')}: {reason}")
        else:
            counts["passed"] += 1
            integration_passed += integration
    line = ", ".join(f"{n} {k}" for k, n in counts.items())
    if a.comfyui is not None:
        line += f"; {integration_passed} integration tests passed"
    print(line)
    for skip in bad_skips:
        print(f"  integration test skipped: {skip}")
    broken = not sum(counts.values()) or bad_skips or (a.comfyui is not None and not integration_passed)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
