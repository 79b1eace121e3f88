"""Train a small instruction model (InstructPix2Pix-style, pixel space) on phantom patient journeys.

A journey is two phantoms with the same anatomy seed, the prior and the current, with one
finding changed between them: added, removed, grown or shrunk, on the left or the right
(pleural effusion, cardiomegaly, pneumothorax, opacity). Its instruction is written from
the change ('add a small right pleural effusion', 'remove the left pneumothorax', 'enlarge
the heart'; napari_medit.instructions). The network reads the noisy current image and the
prior on two channels, and the instruction by cross-attention. As InstructPix2Pix, the
prior is dropped (zeros) 5% of the time and the instruction 10%, independently, so that
both guidance scales have an unconditional model to push against.

Both images of a pair are normalised with the *prior's* intensity window: the editing
engine maps the source, and its edit, through the source's window.

As InstructPix2Pix starts from Stable Diffusion, training can start from a text-to-image
model of the same shape (``init_from``, e.g. demo-cxr): its UNet with the prior's new
input channel zero-initialised, so the first step is exactly the text-to-image model, and
its text encoder, word by word.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..instructions import Change, Finding, Side, write_instruction
from ..preprocessing import Grid, IntensityWindow
from ..sample_data.cxr_phantom import generate_cxr_phantom, to_uint8
from .cxr import MAX_TOKENS, SPECIAL, build
from .loop import TrainConfig, noised, train

IMAGE_DROPOUT, TEXT_DROPOUT = 0.05, 0.10
SMALL_EFFUSION, LARGE_EFFUSION = (0.2, 0.32), (0.45, 0.6)  # effusion_size ranges of 'small' and grown fluid
SMALL_PNEUMOTHORAX, LARGE_PNEUMOTHORAX = (0.12, 0.18), (0.25, 0.32)
CHANGES: dict[Finding, tuple[Change, ...]] = {
    Finding.effusion: (Change.add, Change.remove, Change.enlarge, Change.shrink),
    Finding.pneumothorax: (Change.add, Change.remove, Change.enlarge, Change.shrink),
    Finding.opacity: (Change.add, Change.remove),
    Finding.cardiomegaly: (Change.add, Change.remove),
}


@dataclass(frozen=True)
class Journey:
    prior: np.ndarray  # uint8, as a PNG would hold it
    current: np.ndarray
    instruction: str
    change: Change
    finding: Finding
    side: Side | None
    prior_masks: dict
    current_masks: dict


def journey(
    rng: np.random.Generator,
    size: int,
    finding: Finding | None = None,
    change: Change | None = None,
    side: Side | None = None,
) -> Journey:
    """One prior/current pair and its instruction (random where not given)."""
    finding = finding or Finding(rng.choice([f.value for f in Finding]))
    change = change or Change(rng.choice([c.value for c in CHANGES[finding]]))
    seed = int(rng.integers(2**31))
    if finding is Finding.cardiomegaly:
        side = None
        before, after = {"cardiomegaly": False}, {"cardiomegaly": True}
    else:
        side = side or Side(rng.choice(["left", "right"]))
        knob = {Finding.effusion: "effusion_size", Finding.pneumothorax: "pneumothorax_size"}.get(finding)
        small_range, large_range = (
            (SMALL_EFFUSION, LARGE_EFFUSION)
            if finding is Finding.effusion
            else (SMALL_PNEUMOTHORAX, LARGE_PNEUMOTHORAX)
        )
        present = {finding.value: side.value}
        if finding is Finding.opacity:
            present["opacity_kind"] = str(rng.choice(["consolidation", "nodule"]))
        before, after = {}, present
        if change in (Change.enlarge, Change.shrink):  # small, then large
            before = {**present, knob: float(rng.uniform(*small_range))}
            after = {**present, knob: float(rng.uniform(*large_range))}
        elif knob:
            present[knob] = float(rng.uniform(small_range[0], large_range[1]))
    small = (
        finding is Finding.effusion and change is Change.add and after["effusion_size"] < SMALL_EFFUSION[1]
    )
    if change in (Change.remove, Change.shrink):
        before, after = after, before
    prior = generate_cxr_phantom(size, seed, **before)
    current = generate_cxr_phantom(size, seed, **after)
    return Journey(
        to_uint8(prior.image),
        to_uint8(current.image),
        write_instruction(change, finding, side, small),
        change,
        finding,
        side,
        prior.masks,
        current.masks,
    )


def vocabulary() -> list[str]:
    words = set()
    for finding, changes in CHANGES.items():
        for change in changes:
            for side in [None] if finding is Finding.cardiomegaly else list(Side):
                for small in (False, True):
                    words |= set(write_instruction(change, finding, side, small).split())
    return SPECIAL + sorted(words)


def batches(resolution: int, batch_size: int, seed: int, start_step: int) -> Iterator[dict]:
    """Batch ``step`` depends on (seed, step) alone, so a resumed run sees what an unbroken one would."""
    grid = Grid(resolution, resolution, resolution)
    step = start_step
    while True:
        rng = np.random.default_rng([seed, step])
        step += 1
        priors, currents, prompts = [], [], []
        for _ in range(batch_size):
            pair = journey(rng, resolution)
            # the engine maps source and edit through the source's window
            window = IntensityWindow.of(pair.prior)
            prior, current = (
                grid.to_model(window.to_unit(p)[None])[0] * 2 - 1 for p in (pair.prior, pair.current)
            )
            priors.append(prior * 0 if rng.random() < IMAGE_DROPOUT else prior)
            currents.append(current)
            prompts.append("" if rng.random() < TEXT_DROPOUT else pair.instruction)
        yield {
            "current": torch.stack(currents).float(),
            "prior": torch.stack(priors).float(),
            "prompts": prompts,
        }


def train_cxr_instruct(
    config: TrainConfig, resolution: int = 64, resume: bool = False, init_from: str | Path | None = None
) -> Path:
    """Train the instruction model into ``config.out``; ``init_from``: a text-to-image model folder
    or name (e.g. ``demo-cxr``) to start from (ignored when resuming: the checkpoint has the weights)."""
    from ..backends import save_model
    from ..editing import DiffusersDenoiser

    torch.manual_seed(config.seed)
    # demo-cxr's network and text encoder, over the instructions' words, with the prior as a second channel
    unet, text_encoder, scheduler = build(resolution, vocabulary(), in_channels=2)
    if init_from is not None and not resume:
        initialise_from(unet, text_encoder, init_from)
    unet.to(config.device)
    text_encoder.model.to(config.device)
    alphas = scheduler.alphas_cumprod.to(config.device)

    def loss_fn(batch, generator):
        x_t, t, noise = noised(batch["current"].to(config.device), alphas, generator)
        x = torch.cat([x_t, batch["prior"].to(config.device)], dim=1)
        eps = unet(x, t, encoder_hidden_states=text_encoder(batch["prompts"])).sample
        return torch.nn.functional.mse_loss(eps, noise)

    denoiser = DiffusersDenoiser(
        unet, scheduler, name="demo-cxr-instruct", text_encoder=text_encoder, image_conditioned=True
    )
    model_config = {
        "name": config.out.name,
        "resolution": resolution,
        "value_range": [-1, 1],
        "text_encoder": {"max_length": MAX_TOKENS, "use_attention_mask": False},
        "prompts": example_instructions(),
        "trained_on": "napari-medit chest phantom journeys",
    }
    if init_from is not None:
        model_config["initialised_from"] = Path(init_from).name

    def validate(step):
        save_model(config.out, denoiser, model_config, config.save_float16)
        _validation_image(denoiser, resolution, config.out / f"validation_{step:06d}.png")

    train(
        config,
        {"unet": unet, "text_encoder": text_encoder.model},
        loss_fn,
        lambda start: batches(resolution, config.batch_size, config.seed, start),
        validate,
        resume,
    )
    return save_model(config.out, denoiser, model_config, config.save_float16)


def initialise_from(unet, text_encoder, source: str | Path) -> None:
    """Copy a text-to-image model's weights into the instruction model, InstructPix2Pix's way
    (Brooks et al. 2023, section 3.2): every UNet weight, with the input convolution's new
    channel (the prior) set to zero; the text encoder's layers, and the token embeddings of
    the words both vocabularies share (the others keep their random initialisation).

    ``source`` may also be an instruction model of the same shape (e.g. demo-cxr-instruct): its
    weights are then taken as they are, so that a released model trains on. The optimiser's state
    starts afresh; ``--resume`` is the way to continue a run exactly."""
    from ..backends import load_model

    donor = load_model(source)
    if getattr(donor, "unet", None) is None or getattr(donor, "text_encoder", None) is None:
        raise ValueError(f"{source}: not a text-conditioned diffusers model; start from one such as demo-cxr")
    weights = donor.unet.state_dict()
    conv_in = weights["conv_in.weight"]
    if conv_in.shape[1] == 1:
        prior = torch.zeros_like(conv_in).expand(-1, unet.conv_in.in_channels - 1, -1, -1)
        weights["conv_in.weight"] = torch.cat([conv_in, prior], dim=1)
    elif conv_in.shape[1] != unet.conv_in.in_channels:
        raise ValueError(
            f"{source}: its UNet reads {conv_in.shape[1]} channels; start from a text-to-image model "
            f"(1 channel) or an instruction model ({unet.conv_in.in_channels} channels)"
        )
    if mismatch := _first_mismatch(unet, weights):
        raise ValueError(
            f"{source}: its UNet has another shape than this instruction model's "
            f"(train both at the same --resolution): {mismatch}"
        )
    encoder = donor.text_encoder.model.state_dict()
    ours = text_encoder.model.state_dict()
    # CLIP's token table; its prefix varies with the transformers version
    key = next((k for k in encoder if k.endswith("token_embedding.weight")), None)
    if key not in ours or encoder[key].shape[1:] != ours[key].shape[1:]:
        raise ValueError(
            f"{source}: its text encoder is not a CLIP text model of this one's width; "
            "start from a model trained by `napari-medit train cxr` at the same --resolution"
        )
    embedding = ours[key].clone()
    donor_words = donor.text_encoder.tokenizer.get_vocab()
    for word, row in text_encoder.tokenizer.get_vocab().items():
        # get_vocab() also lists special tokens the tokenizer adds ([MASK]) beyond the table
        if word in donor_words and row < len(embedding) and donor_words[word] < len(encoder[key]):
            embedding[row] = encoder[key][donor_words[word]]
    encoder[key] = embedding
    if mismatch := _first_mismatch(text_encoder.model, encoder):
        raise ValueError(f"{source}: its text encoder has another shape than this one's: {mismatch}")
    # loaded only once both fit: a refused donor leaves this model as it was
    unet.load_state_dict(weights)
    text_encoder.model.load_state_dict(encoder)


def _first_mismatch(module: torch.nn.Module, weights: dict) -> str | None:
    """Why ``weights`` cannot load into ``module`` exactly, or None. Checked up front because
    load_state_dict copies every tensor that fits before it raises on the ones that do not."""
    own = module.state_dict()
    if unmatched := sorted(own.keys() ^ weights.keys()):
        return f"{unmatched[0]} is {'missing' if unmatched[0] in own else 'unexpected'}"
    return next(
        (
            f"{name} is {tuple(weights[name].shape)}, here {tuple(tensor.shape)}"
            for name, tensor in own.items()
            if weights[name].shape != tensor.shape
        ),
        None,
    )


def example_instructions() -> list[str]:
    return [
        write_instruction(Change.add, Finding.effusion, Side.right, small=True),
        write_instruction(Change.remove, Finding.effusion, Side.right),
        write_instruction(Change.enlarge, Finding.effusion, Side.left),
        write_instruction(Change.add, Finding.pneumothorax, Side.left),
        write_instruction(Change.remove, Finding.pneumothorax, Side.right),
        write_instruction(Change.add, Finding.opacity, Side.right),
        write_instruction(Change.enlarge, Finding.cardiomegaly),
        write_instruction(Change.remove, Finding.cardiomegaly),
    ]


def _validation_image(denoiser, resolution: int, path: Path) -> None:
    """On a held-out journey pair: remove the right effusion from the prior, add one to a healthy chest."""
    from PIL import Image

    from ..editing import edit

    sick = to_uint8(generate_cxr_phantom(4 * resolution, 123456, effusion="right", effusion_size=0.5).image)
    healthy = to_uint8(generate_cxr_phantom(4 * resolution, 123456).image)
    tiles = []
    for pixels, prompt in (
        (sick, "remove the right pleural effusion"),
        (healthy, "add a right pleural effusion"),
    ):
        result = edit("instruct", pixels, model=denoiser, prompt=prompt, steps=20, seed=0)
        tiles += [pixels, result.image.array]
    Image.fromarray(np.concatenate(tiles, axis=1)).save(path)
