"""Damaged and hostile files: seeded mutations of real files of every format the reader takes.

Each case runs in a child process with a memory cap and a time limit (fuzz_readers.py); the only
outcomes allowed are a read with a sane geometry and ImageReadError. A case that crashed or hung
the child counts as wrong, and the child restarts with the next case. Reproduce case N with
``python tests/fuzz_readers.py N 1 /tmp/fuzz``.
"""

from __future__ import annotations

import os
import resource
import select
import subprocess
import sys
from collections import Counter
from pathlib import Path

CASES = 900  # 100 per format: about 10 s
CASE_SECONDS = 20.0
MEMORY_CAP = 3 * 2**30  # the child's address space: a reader that allocates what a header claims dies here
RUNNER = Path(__file__).with_name("fuzz_readers.py")


def _cap_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def fuzz(first: int, count: int, folder: Path) -> dict[int, tuple[str, str]]:
    outcomes: dict[int, tuple[str, str]] = {}
    environ = {**os.environ, "NAPARI_MEDIT_MAX_IMAGE_BYTES": "512M"}
    start = first
    while start < first + count:
        child = subprocess.Popen(
            [sys.executable, str(RUNNER), str(start), str(first + count - start), str(folder)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ,
            preexec_fn=_cap_memory,
        )
        expected = start
        while expected < first + count:
            ready, _, _ = select.select([child.stdout], [], [], CASE_SECONDS if expected > start else 120)
            line = child.stdout.readline() if ready else ""
            if not line:  # the child died on case ``expected``, or hung on it
                child.kill()
                child.wait()
                outcomes[expected] = (
                    "WRONG",
                    f"crashed or hung the reader (exit {child.returncode}): {child.stderr.read()[-300:]}",
                )
                expected += 1
                break
            index, outcome, detail = line.rstrip("\n").split("\t", 2)
            outcomes[int(index)] = (outcome, detail)
            expected = int(index) + 1
        else:
            child.wait()
        start = expected
    return outcomes


def test_damaged_files_are_read_sanely_or_refused(tmp_path):
    outcomes = fuzz(0, CASES, tmp_path)
    assert sorted(outcomes) == list(range(CASES))
    counts = Counter(outcome for outcome, _ in outcomes.values())
    wrong = {index: detail for index, (outcome, detail) in outcomes.items() if outcome == "WRONG"}
    print(f"fuzz: {CASES} cases, {counts['read']} read, {counts['refused']} refused, {len(wrong)} wrong")
    assert not wrong, "\n".join(f"case {i}: {d}" for i, d in sorted(wrong.items())[:20])
    # the mutations reach both outcomes
    assert counts["read"] > CASES // 10 and counts["refused"] > CASES // 4


# Cases that escaped the reader before it was hardened (Dec 2026: 46 of the first 360), one per kind of bug.
FOUND = {
    0: "NIfTI with a NaN sform, handed on with a NaN affine "
    "(nibabel takes the sform whenever its code is set)",
    5: "PNG declaring 2**31 pixels: Pillow's DecompressionBombError straight through",
    17: "DICOM with a NaN orientation or spacing: accepted with a non-finite affine",
    27: "NIfTI with a singular sform: accepted",
    30: "NIfTI with a zero voxel size in its sform: accepted",
    106: "DICOM whose geometry fields went non-finite: accepted",
    116: "DICOM turned PALETTE COLOR without its lookup table: pydicom's ValueError straight through",
}


def test_the_cases_that_found_bugs_stay_fixed(tmp_path):
    for index, bug in FOUND.items():
        outcome, detail = fuzz(index, 1, tmp_path)[index]
        assert outcome in ("read", "refused"), f"case {index} ({bug}): {detail}"
