"""The benchmark suite: every comparison measured side by side in one run, printed as ratios.

    make benchmark        # = xvfb-run -a python benchmarks/suite.py --out benchmarks/results/cpu.md

1. Wall time against the floor of model evaluations, per method, on the demo models (engine.py).
2. Batched slices against one slice at a time (engine.py).
3. napari-medit's RePaint against diffusers' RePaintPipeline run slice by slice on the same
   UNet (demo-cxr's, driven with the empty prompt) and the same schedule.
4. Peak memory against the number of slices edited (each count in a fresh process).
5. GUI event-loop stall during an edit (gui_stall.py; needs a display, e.g. Xvfb).
6. Import time: the plugin's package and reader against a bare interpreter and the engine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


# ---------------------------------------------------------------- RePaint vs diffusers


class EmptyPromptUNet(torch.nn.Module):
    """A text UNet seen as an unconditional one (what RePaintPipeline calls): the empty prompt,
    as napari-medit gives text models for methods without a prompt."""

    def __init__(self, unet, embedding):
        super().__init__()
        self.unet, self.embedding, self.config = unet, embedding, unet.config
        self.calls = 0

    @property
    def dtype(self):
        return self.unet.dtype

    @property
    def device(self):
        return self.unet.device

    def forward(self, sample, timestep):
        self.calls += 1
        return self.unet(sample, timestep, encoder_hidden_states=self.embedding.expand(len(sample), -1, -1))


def repaint_against_diffusers(slices: int = 4, steps: int = 50, jump_length: int = 10, jump_n_sample: int = 2
                              ) -> list[str]:
    from diffusers import RePaintPipeline, RePaintScheduler

    from engine import CallLog, sample_image
    from napari_medit.backends import load_model
    from napari_medit.editing import edit

    model = load_model("demo-cxr", "cpu")
    image, region = sample_image()
    volume = np.stack([np.roll(image, 3 * i, axis=1) for i in range(slices)])
    masks = np.stack([region] * slices)
    options = dict(steps=steps, jump_length=jump_length, jump_n_sample=jump_n_sample)
    edit("repaint", volume[:1], model=model, pathology_mask=masks[:1], steps=2, jump_length=1, jump_n_sample=1)

    log = CallLog(model)
    start = time.perf_counter()
    edit("repaint", volume, model=model, pathology_mask=masks, batch_size=slices, **options)
    ours_batched = time.perf_counter() - start
    calls_batched = len(log.sizes)
    log.sizes.clear()
    start = time.perf_counter()
    edit("repaint", volume, model=model, pathology_mask=masks, batch_size=1, **options)
    ours_single = time.perf_counter() - start
    calls_single = len(log.sizes)
    model.model_output = log.inner

    with torch.no_grad():
        empty = model.encode_text([""]).to(model.device)
    unet = EmptyPromptUNet(model.unet, empty)
    pipe = RePaintPipeline(unet=unet, scheduler=RePaintScheduler.from_config(model.schedule.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    unit = (volume - volume.min()) / (volume.max() - volume.min()) * 2 - 1
    start = time.perf_counter()
    for index in range(slices):
        pipe(image=torch.from_numpy(unit[index][None, None]).float(),
             mask_image=torch.from_numpy((~masks[index])[None, None]).float(),  # diffusers: 1 = known
             num_inference_steps=steps, jump_length=jump_length, jump_n_sample=jump_n_sample,
             generator=torch.Generator().manual_seed(index), output_type="np")
    theirs = time.perf_counter() - start
    return [
        "## RePaint: napari-medit against diffusers' RePaintPipeline",
        "",
        f"demo-cxr's UNet with the empty prompt, its DDIM betas, {slices} slices of 64x64, steps={steps}, "
        f"jump_length={jump_length}, jump_n_sample={jump_n_sample}; diffusers run slice by slice as its "
        "pipeline takes one image per call here.",
        "",
        "| run | network calls | wall s | / diffusers |",
        "|---|---:|---:|---:|",
        f"| diffusers RePaintPipeline, slice by slice | {unet.calls} | {theirs:.2f} | 1.00 |",
        f"| napari-medit, one slice at a time | {calls_single} | {ours_single:.2f} | {ours_single / theirs:.2f} |",
        f"| napari-medit, {slices} slices batched | {calls_batched} | {ours_batched:.2f} | "
        f"{ours_batched / theirs:.2f} |",
    ]


# ---------------------------------------------------------------- memory against slices


def memory_probe(count: int) -> dict:
    """In a fresh process: peak RSS of a MedEdit run on ``count`` axial slices of the sample brain."""
    from napari_medit.backends import load_model
    from napari_medit.editing import edit
    from napari_medit.sample_data import load_brain

    sample = load_brain()
    t1, brain = sample["t1"], sample["brain_mask"]
    tube = np.zeros(brain.array.shape, bool)  # a lesion through every axial slice, so any range has work
    tube[60:70, 70:80, :] = True
    lesion = tube & (brain.array > 0)
    model = load_model("demo-brain", "cpu")
    torch.set_num_threads(2)
    before = rss_mib()
    # Sampled, not ru_maxrss: the process's high-water mark (imports, model load) can hide the edit's own.
    peak, done = [before], threading.Event()

    def sample():
        while not done.wait(0.002):
            peak[0] = max(peak[0], rss_mib())

    sampler = threading.Thread(target=sample)
    sampler.start()
    first = 20
    try:
        result = edit("mededit", t1, model=model, pathology_mask=lesion, brain_mask=brain.array, axis="axial",
                      slices=(first, first + count), steps=3, jump_n_sample=1)
    finally:
        done.set()
        sampler.join()
    return {"slices": len(result.edited_slices), "before_mib": before, "peak_mib": max(peak[0], rss_mib()),
            "volume_mib": t1.array.nbytes / 2**20}


def rss_mib() -> float:
    """This process's resident memory now (Linux /proc)."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_against_slices(counts=(1, 8, 32, 96)) -> list[str]:
    rows = []
    for count in counts:
        run = subprocess.run([sys.executable, __file__, "--memory-probe", str(count)], capture_output=True,
                             text=True, check=True)
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
    base = rows[0]["peak_mib"] - rows[0]["before_mib"]
    lines = [
        "## Peak memory against the number of slices",
        "",
        f"MedEdit on demo-brain, axial slices of the sample brain ({rows[0]['volume_mib']:.1f} MiB int16 volume), "
        "3 steps, CPU batches of 4; a fresh process's resident memory before the edit and its peak during it "
        "(sampled every 2 ms).",
        "",
        "| slices | RSS before edit MiB | peak MiB | edit's increase MiB | / 1 slice |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        grown = row["peak_mib"] - row["before_mib"]
        lines.append(f"| {row['slices']} | {row['before_mib']:.0f} | {row['peak_mib']:.0f} | {grown:.0f} | "
                     f"{grown / base if base > 0 else float('nan'):.2f} |")
    return lines


# ---------------------------------------------------------------- GUI stall, import time


def gui_stall() -> list[str]:
    import gui_stall as probe

    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        return ["## GUI stall", "", "Not measured: no display (run the suite under xvfb-run)."]
    run = subprocess.run([sys.executable, str(HERE / "gui_stall.py"), "--json"], capture_output=True, text=True,
                         check=True)
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    return ["## GUI stall", "", probe.report(figures)]


def import_seconds(statement: str, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def import_time() -> list[str]:
    bare = import_seconds("pass")
    rows = [
        ("`import napari_medit` (what napari loads at start-up)", "import napari_medit"),
        ("the reader and writers", "import napari_medit._reader, napari_medit._writer"),
        ("the editing engine (torch, diffusers, MONAI)", "import napari_medit.editing, napari_medit.backends"),
    ]
    lines = [
        "## Import time",
        "",
        f"Median of 5 fresh interpreters; a bare interpreter takes {bare * 1000:.0f} ms.",
        "",
        "| import | ms | above a bare interpreter ms |",
        "|---|---:|---:|",
    ]
    for name, statement in rows:
        seconds = import_seconds(statement)
        lines.append(f"| {name} | {seconds * 1000:.0f} | {(seconds - bare) * 1000:.0f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the report (markdown) here")
    parser.add_argument("--memory-probe", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe)))
        return 0

    import engine

    device = torch.device("cpu")
    started = time.perf_counter()
    lines = ["# Benchmarks (CPU)", "", f"Machine: {engine.machine(device)}",
             "Command: `make benchmark` (= `xvfb-run -a .venv/bin/python benchmarks/suite.py "
             "--out benchmarks/results/cpu.md`)", ""]
    for section in (engine.sections, repaint_against_diffusers, memory_against_slices, gui_stall, import_time):
        part = section(device) if section is engine.sections else section()
        lines += [*part, ""]
        print("\n".join(part) + "\n", flush=True)
    lines.append(f"Whole suite: {time.perf_counter() - started:.0f} s.")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
