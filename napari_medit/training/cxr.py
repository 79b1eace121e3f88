"""Train a small text-conditioned chest X-ray diffusion model on the phantom generator.

A diffusers UNet2DConditionModel in pixel space reads, by cross-attention, a
small CLIP text encoder trained with it from scratch on the findings' names
('Pleural effusion', 'Cardiomegaly', ...; 'No findings' when there are none).
Prompts are dropped 10% of the time so that classifier-free guidance works.
Phantoms are rendered at the model's resolution (the generator anti-aliases; rendering
larger and resampling doubled the CPU time per step) and normalised with the editing
engine's own code. Attention sits at the coarsest level only, 16 x 16 at 64 px, which
keeps a CPU training step under a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..preprocessing import Grid, IntensityWindow
from ..sample_data.cxr_phantom import generate_cxr_phantom, to_uint8
from .loop import TrainConfig, extra_levels, noised, train

PROMPTS = {  # finding -> the words a prompt uses for it
    "effusion": "Pleural effusion",
    "cardiomegaly": "Cardiomegaly",
    "pneumothorax": "Pneumothorax",
    "opacity": "Opacity",
    "chest_drain": "Chest drain",
}
NO_FINDINGS = "No findings"
FINDING_PROBABILITY = 0.3
PROMPT_DROPOUT = 0.1  # unconditional training for classifier-free guidance
MAX_TOKENS = 16
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_schedule="linear",
    beta_start=1e-4,
    beta_end=2e-2,
    clip_sample=False,
    prediction_type="epsilon",
    timestep_spacing="trailing",
    steps_offset=1,
)


def vocabulary() -> list[str]:
    words = {
        w
        for p in [*PROMPTS.values(), NO_FINDINGS, "acute cardiopulmonary process left right and"]
        for w in p.lower().replace(",", " , ").split()
    }
    return SPECIAL + sorted(words | {","})


def random_case(rng: np.random.Generator, size: int):
    """(phantom, prompt) with each finding present with FINDING_PROBABILITY."""
    chosen = {name: rng.random() < FINDING_PROBABILITY for name in PROMPTS}
    side = lambda: "left" if rng.random() < 0.5 else "right"  # noqa: E731
    phantom = generate_cxr_phantom(
        size,
        int(rng.integers(2**31)),
        effusion=side() if chosen["effusion"] else None,
        cardiomegaly=chosen["cardiomegaly"],
        opacity=side() if chosen["opacity"] else None,
        pneumothorax=side() if chosen["pneumothorax"] else None,
        chest_drain=side() if chosen["chest_drain"] else None,
    )
    words = [PROMPTS[name] for name, on in chosen.items() if on]
    return phantom, ", ".join(words) if words else NO_FINDINGS


def batches(resolution: int, batch_size: int, seed: int, start_step: int) -> Iterator[dict]:
    """Batch ``step`` depends on (seed, step) alone, so a resumed run sees what an unbroken one would."""
    grid = Grid(resolution, resolution, resolution)
    step = start_step
    while True:
        rng = np.random.default_rng([seed, step])
        step += 1
        images, prompts = [], []
        for _ in range(batch_size):
            phantom, prompt = random_case(rng, resolution)
            pixels = to_uint8(phantom.image)
            unit = IntensityWindow.of(pixels).to_unit(pixels)
            images.append(grid.to_model(unit[None])[0] * 2 - 1)  # the model's range is [-1, 1]
            prompts.append("" if rng.random() < PROMPT_DROPOUT else prompt)
        yield {"image": torch.stack(images).float(), "prompts": prompts}


def build(resolution: int, words: list[str] | None = None, in_channels: int = 1):
    """The UNet, its text encoder over ``words`` (default: the findings' vocabulary) and the scheduler.
    ``in_channels`` 2: the instruction model, which reads the prior image on the second channel."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import BertTokenizer, CLIPTextConfig, CLIPTextModel

    from ..backends.text import TransformersTextEncoder

    words = words or vocabulary()
    # transformers 5 ignores BertTokenizer(vocab_file=...): the vocabulary is passed as a dict.
    tokenizer = BertTokenizer(
        vocab={w: i for i, w in enumerate(words)}, do_lower_case=True, model_max_length=MAX_TOKENS
    )
    text_model = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(words),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
        )
    )
    # The 64 px demo's three levels, plus one of 128 channels per doubling above 64 px (as the brain
    # model): cross-attention always works on a grid of at most 16 x 16.
    extra = extra_levels(resolution)
    unet = UNet2DConditionModel(
        sample_size=resolution,
        in_channels=in_channels,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(32, 64, 64) + (128,) * extra,
        down_block_types=("DownBlock2D",) * (2 + extra) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (2 + extra),
        cross_attention_dim=64,
        attention_head_dim=8,
    )
    return unet, TransformersTextEncoder(tokenizer, text_model, MAX_TOKENS), DDIMScheduler(**SCHEDULER)


def train_cxr(config: TrainConfig, resolution: int = 64, resume: bool = False) -> Path:
    from ..backends import save_model
    from ..editing import DiffusersDenoiser

    torch.manual_seed(config.seed)
    unet, text_encoder, scheduler = build(resolution)
    unet.to(config.device)
    text_encoder.model.to(config.device)
    alphas = scheduler.alphas_cumprod.to(config.device)

    def loss_fn(batch, generator):
        x_t, t, noise = noised(batch["image"].to(config.device), alphas, generator)
        eps = unet(x_t, t, encoder_hidden_states=text_encoder(batch["prompts"])).sample
        return torch.nn.functional.mse_loss(eps, noise)

    denoiser = DiffusersDenoiser(unet, scheduler, name="demo-cxr", text_encoder=text_encoder)
    model_config = {
        "name": config.out.name,
        "resolution": resolution,
        "value_range": [-1, 1],
        "text_encoder": {"max_length": MAX_TOKENS, "use_attention_mask": False},
        "prompts": [NO_FINDINGS, *PROMPTS.values()],
        "trained_on": "napari-medit chest phantoms",
    }

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


def _validation_image(denoiser, resolution: int, path: Path) -> None:
    """RadEdit on a held-out phantom: add an effusion in the right lower zone, remove it from one."""
    from PIL import Image
    from scipy.ndimage import binary_dilation

    from ..editing import edit

    healthy = generate_cxr_phantom(4 * resolution, 123456)
    sick = generate_cxr_phantom(4 * resolution, 123456, effusion="right")
    region = binary_dilation(sick.masks["effusion"], iterations=resolution // 16)
    tiles = []
    for phantom, prompt in ((healthy, "Pleural effusion"), (sick, NO_FINDINGS)):
        pixels = to_uint8(phantom.image)
        result = edit(
            "radedit",
            pixels,
            model=denoiser,
            prompt=prompt,
            edit_mask=region,
            steps=50,
            skip=15,
            guidance=4.0,
            seed=0,
        )
        tiles += [pixels, result.image.array]
    Image.fromarray(np.concatenate(tiles, axis=1)).save(path)
