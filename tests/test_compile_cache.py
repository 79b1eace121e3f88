"""torch.compile's caches persist in the user's cache folder: a second process loads what the first
compiled (Inductor's FX graph cache hits), and a changed network compiles afresh (it misses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
import numpy as np
import tiny_models
from torch._dynamo.utils import counters
from napari_medit.editing import edit

conditions = ("brain_mask",) if sys.argv[1] == "changed" else ()
masks = {{"brain_mask": np.ones((16, 16), bool)}} if conditions else {{}}
image = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
model = tiny_models.pixel_unet(conditions=conditions)
edit("sdedit", image, model=model, steps=2, compile_network=True, **masks)
print(json.dumps(dict(counters["inductor"])))
"""


def _compile_in_a_new_process(tmp_path: Path, network: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    environ["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    script = CHILD.format(tests=str(Path(__file__).parent))
    done = subprocess.run(
        [sys.executable, "-c", script, network], env=environ, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform == "win32", reason="Inductor's C++ compiler setup differs")
def test_a_second_process_loads_the_compiled_network_and_a_changed_one_compiles_afresh(tmp_path):
    first = _compile_in_a_new_process(tmp_path, "same")
    assert first.get("fxgraph_cache_miss", 0) >= 1 and not first.get("fxgraph_cache_hit")
    folders = list((tmp_path / "cache" / "napari-medit" / "torch-compile").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("torch-")  # one per torch version and CPU
    second = _compile_in_a_new_process(tmp_path, "same")
    assert second.get("fxgraph_cache_hit", 0) >= 1 and not second.get("fxgraph_cache_miss")
    changed = _compile_in_a_new_process(tmp_path, "changed")  # one more input channel: another graph
    assert changed.get("fxgraph_cache_miss", 0) >= 1 and not changed.get("fxgraph_cache_hit")
