"""What compiling costs a new process once torch.compile's caches persist (napari-medit keeps them in the
user's cache folder): the same short edit with ``compile_network`` in three fresh processes on an empty
cache folder, then once more with the network changed.

    python benchmarks/compile_cache.py [--model demo-cxr] [--out benchmarks/results/compile-cache-cpu.md]

Each process loads the model and runs RadEdit for 4 steps (two batch shapes), compiled; the fourth runs
instruct on demo-cxr-instruct instead (another network). The figure is that edit's time, compile
included, and Inductor's FX graph cache hits and misses.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from _report import write_report

CHILD = """
import json, sys, time
from torch._dynamo.utils import counters
from napari_medit.backends import load_model
from napari_medit.editing import edit
from napari_medit.sample_data import load_cxr

model_name, changed = sys.argv[1], sys.argv[2] == "changed"
cxr = load_cxr()
if changed:  # another network: the instruction model (two input channels)
    method, model = "instruct", load_model("demo-cxr-instruct")
    options = {"prompt": "add a left pleural effusion"}
else:
    method, model = "radedit", load_model(model_name)
    options = {"edit_mask": cxr["edit_mask"], "keep_mask": cxr["keep_mask"], "skip": 0}
started = time.perf_counter()
edit(method, cxr["cxr"], model=model, steps=4, compile_network=True, **options)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, **{k: v for k, v in counters["inductor"].items() if "fxgraph" in k}}))
"""


def run_child(model: str, cache: Path, changed: bool) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    environ["XDG_CACHE_HOME"] = str(cache)
    arguments = [sys.executable, "-c", CHILD, model, "changed" if changed else "same"]
    done = subprocess.run(arguments, env=environ, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-cxr")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    lines = [
        "# torch.compile in a new process, with the compile caches kept",
        "",
        f"`python benchmarks/compile_cache.py --model {args.model}` on {platform.platform()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads.",
        "",
        "| process | network | edit with compile, s | FX graph cache hits / misses |",
        "|---|---|---:|---|",
    ]
    with tempfile.TemporaryDirectory() as cache:
        runs = [("1st (empty cache)", False), ("2nd", False), ("3rd", False), ("4th", True)]
        for label, changed in runs:
            figures = run_child(args.model, Path(cache), changed)
            network = "demo-cxr-instruct (another network)" if changed else args.model
            lines.append(
                f"| {label} | {network} | {figures['seconds']:.1f} | "
                f"{figures.get('fxgraph_cache_hit', 0)} / {figures.get('fxgraph_cache_miss', 0)} |"
            )
            print(lines[-1], flush=True)
    lines += [
        "",
        "A process that finds the graphs in the cache skips Inductor's code generation and C++ build;",
        "dynamo still traces the network (seconds). Another network misses and compiles in full.",
    ]
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
