"""The benchmark suite: every comparison measured side by side in one run, printed as ratios.

    make benchmark        # = xvfb-run -a python benchmarks/suite.py --out benchmarks/results/cpu.md

1. Wall time against the floor of model evaluations, per method, on the demo models (engine.py).
2. Batched slices against one slice at a time (engine.py).
3. napari-medit's RePaint against diffusers' RePaintPipeline run slice by slice on the same
   UNet (demo-cxr's, driven with the empty prompt) and the same schedule.
4. napari-medit's ``instruct`` against diffusers' StableDiffusionInstructPix2PixPipeline on
   demo-cxr-instruct's UNet, one image and batched slices.
5. Peak memory against the number of slices edited (each count in a fresh process).
6. GUI event-loop stall during an edit (gui_stall.py; needs a display, e.g. Xvfb).
7. Import time: the plugin's package and reader against a bare interpreter and the engine.
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
from types import SimpleNamespace

import numpy as np
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


def shifted_slices(image: np.ndarray, count: int) -> np.ndarray:
    """``count`` slices of ``image``, each shifted 3 pixels further: a volume whose slices differ."""
    return np.stack([np.roll(image, 3 * i, axis=1) for i in range(count)])


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


def repaint_against_diffusers(
    slices: int = 4, steps: int = 50, jump_length: int = 10, jump_n_sample: int = 2
) -> list[str]:
    from diffusers import RePaintPipeline, RePaintScheduler
    from engine import CallLog, sample_image

    from napari_medit.backends import load_model
    from napari_medit.editing import edit

    model = load_model("demo-cxr", "cpu")
    image, region = sample_image()
    volume = shifted_slices(image, slices)
    masks = np.stack([region] * slices)
    options = dict(steps=steps, jump_length=jump_length, jump_n_sample=jump_n_sample)
    edit(
        "repaint", volume[:1], model=model, pathology_mask=masks[:1], steps=2, jump_length=1, jump_n_sample=1
    )

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
        pipe(
            image=torch.from_numpy(unit[index][None, None]).float(),
            mask_image=torch.from_numpy((~masks[index])[None, None]).float(),  # diffusers: 1 = known
            num_inference_steps=steps,
            jump_length=jump_length,
            jump_n_sample=jump_n_sample,
            generator=torch.Generator().manual_seed(index),
            output_type="np",
        )
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
        f"| napari-medit, one slice at a time | {calls_single} | {ours_single:.2f} | "
        f"{ours_single / theirs:.2f} |",
        f"| napari-medit, {slices} slices batched | {calls_batched} | {ours_batched:.2f} | "
        f"{ours_batched / theirs:.2f} |",
    ]


# ---------------------------------------------------------------- instruct vs diffusers


class PixelSpaceVAE(torch.nn.Module):
    """What diffusers' pipelines call a VAE, for a pixel-space model: the "latent" is the image."""

    config = SimpleNamespace(block_out_channels=[1], latent_channels=1, scaling_factor=1.0)
    device, dtype = torch.device("cpu"), torch.float32

    def encode(self, image):
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: image))


def instruct_against_diffusers(slices: int = 4, steps: int = 50) -> list[str]:
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from engine import CallLog, forward_seconds, sample_image

    from napari_medit.backends import load_model
    from napari_medit.editing import edit

    prompt = "remove the right pleural effusion"
    model = load_model("demo-cxr-instruct", "cpu")
    image, _ = sample_image()
    volume = shifted_slices(image, slices)
    edit("instruct", volume[:1], model=model, prompt=prompt, steps=2)  # warm-up

    log = CallLog(model)
    ours = {}
    for batch in (1, slices):
        log.sizes.clear()
        start = time.perf_counter()
        edit("instruct", volume[:batch], model=model, prompt=prompt, steps=steps, batch_size=batch)
        ours[batch] = time.perf_counter() - start, list(log.sizes)
    model.model_output = log.inner
    per_call = {size: forward_seconds(model, log.inner, size) for size in {3, 3 * slices}}
    floor = {batch: sum(per_call[size] for size in sizes) for batch, (_, sizes) in ours.items()}

    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=PixelSpaceVAE(),
        text_encoder=None,
        tokenizer=None,
        unet=model.unet,
        scheduler=model.schedule.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        text, empty = model.encode_text([prompt]), model.encode_text([""])
    # [0, 1]: the pipeline's image processor maps it to the model's [-1, 1] as napari-medit's window does
    unit = torch.from_numpy((volume - volume.min()) / (volume.max() - volume.min())).float()[:, None]
    theirs = {}
    for batch in (1, slices):
        start = time.perf_counter()
        with torch.no_grad():
            pipe(
                image=unit[:batch],
                prompt_embeds=text.expand(batch, -1, -1),
                negative_prompt_embeds=empty.expand(batch, -1, -1),
                num_inference_steps=steps,
                guidance_scale=7.5,
                image_guidance_scale=1.5,
                output_type="latent",
                generator=torch.Generator().manual_seed(0),
            )
        theirs[batch] = time.perf_counter() - start
    rows = []
    for batch in (1, slices):
        wall, sizes = ours[batch]
        what = "one image" if batch == 1 else f"{batch} slices in one batch"
        rows += [
            f"| diffusers StableDiffusionInstructPix2PixPipeline, {what} | {len(sizes)} x {3 * batch} | "
            f"{theirs[batch]:.2f} | {floor[batch]:.2f} | {theirs[batch] / floor[batch]:.2f} | 1.00 |",
            f"| napari-medit `instruct`, {what} | {len(sizes)} x {sizes[0]} | {wall:.2f} | "
            f"{floor[batch]:.2f} | "
            f"{wall / floor[batch]:.2f} | {wall / theirs[batch]:.2f} |",
        ]
    return [
        "## Instruct: napari-medit against diffusers' InstructPix2Pix pipeline",
        "",
        f"demo-cxr-instruct's UNet and DDIM scheduler, {steps} steps, s_T 7.5, s_I 1.5, 64x64; the pipeline "
        f"is "
        'given the model\'s text embeddings and an identity "VAE" (the model is pixel-space). '
        "Floor = the run's network calls, each one forward pass at its batch size (median of 15).",
        "",
        "| run | network calls x batch | wall s | floor s | wall / floor | / diffusers |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
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
        result = edit(
            "mededit",
            t1,
            model=model,
            pathology_mask=lesion,
            brain_mask=brain.array,
            axis="axial",
            slices=(first, first + count),
            steps=3,
            jump_n_sample=1,
        )
    finally:
        done.set()
        sampler.join()
    return {
        "slices": len(result.edited_slices),
        "before_mib": before,
        "peak_mib": max(peak[0], rss_mib()),
        "volume_mib": t1.array.nbytes / 2**20,
    }


def rss_mib() -> float:
    """This process's resident memory now (Linux /proc)."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_against_slices(counts=(1, 8, 32, 96)) -> list[str]:
    rows = []
    for count in counts:
        run = subprocess.run(
            [sys.executable, __file__, "--memory-probe", str(count)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
    base = rows[0]["peak_mib"] - rows[0]["before_mib"]
    lines = [
        "## Peak memory against the number of slices",
        "",
        f"MedEdit on demo-brain, axial slices of the sample brain ({rows[0]['volume_mib']:.1f} MiB int16 "
        f"volume), "
        "3 steps, CPU batches of 4; a fresh process's resident memory before the edit and its peak during it "
        "(sampled every 2 ms).",
        "",
        "| slices | RSS before edit MiB | peak MiB | edit's increase MiB | / 1 slice |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        grown = row["peak_mib"] - row["before_mib"]
        lines.append(
            f"| {row['slices']} | {row['before_mib']:.0f} | {row['peak_mib']:.0f} | {grown:.0f} | "
            f"{grown / base if base > 0 else float('nan'):.2f} |"
        )
    return lines


# ---------------------------------------------------------------- GUI stall, import time


def gui_stall() -> list[str]:
    import gui_stall as probe

    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        return ["## GUI stall", "", "Not measured: no display (run the suite under xvfb-run)."]
    run = subprocess.run(
        [sys.executable, str(HERE / "gui_stall.py"), "--json"], capture_output=True, text=True, check=True
    )
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    return ["## GUI stall and the compute boundary", "", probe.report(figures["runs"], figures["boundary"])]


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
        (
            "the editing engine (torch, diffusers, MONAI)",
            "import napari_medit.editing, napari_medit.backends",
        ),
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


def engine_sections() -> list[str]:
    import engine

    return engine.sections(torch.device("cpu"))


SECTIONS = {
    "engine": engine_sections,
    "repaint": repaint_against_diffusers,
    "instruct": instruct_against_diffusers,
    "memory": memory_against_slices,
    "gui": gui_stall,
    "imports": import_time,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the report (markdown) here")
    parser.add_argument(
        "--only", choices=sorted(SECTIONS), help="run one section and print it (nothing written)"
    )
    parser.add_argument("--memory-probe", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe)))
        return 0

    import engine

    if args.only:
        print("\n".join(SECTIONS[args.only]()))
        return 0
    started = time.perf_counter()
    lines = [
        "# Benchmarks (CPU)",
        "",
        f"Machine: {engine.machine(torch.device('cpu'))}",
        "Command: `make benchmark` (= `xvfb-run -a .venv/bin/python benchmarks/suite.py "
        "--out benchmarks/results/cpu.md`)",
        "",
    ]
    for section in SECTIONS.values():
        part = section()
        lines += [*part, ""]
        print("\n".join(part) + "\n", flush=True)
    lines.append(f"Whole suite: {time.perf_counter() - started:.0f} s.")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
