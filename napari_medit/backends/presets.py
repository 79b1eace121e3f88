"""The published models, loaded offline-first from local folders or the Hugging Face cache.

- ``radedit``: microsoft/radedit (UNet, gated: accept its licence on the hub first),
  stabilityai/sdxl-vae and microsoft/BiomedVLP-BioViL-T (text encoder; it runs code shipped
  with its weights, so it loads only with ``trust_remote_code=True``), with the model card's
  DDIM scheduler. 512 x 512 images, 4 x 64 x 64 latents; the VAE stays in float32.
  Slices are resized and centre-cropped, intensities min-max to [-1, 1] (App. D).
- A Stable Diffusion 1.x-style folder (model_index.json, unet/, vae/, text_encoder/,
  tokenizer/, scheduler/), e.g. the PIE MIMIC-CXR fine-tune, from a path or ``hub:ORG/NAME``,
  with its own scheduler. (PIE's official script loads its UNet from the text_encoder
  subfolder; here unet/ is unet/.) Slices are resized and centre-cropped, intensities 8-bit
  /255 to [-1, 1], as PIE's run_pie.py reads its PNGs.

Nothing is downloaded unless ``download=True``; without it a model missing from the cache
fails at once, naming what is missing and how to get it.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from .. import preprocessing
from ..results import ModelLoadError

RADEDIT_UNET, RADEDIT_VAE, RADEDIT_TEXT = (
    "microsoft/radedit",
    "stabilityai/sdxl-vae",
    "microsoft/BiomedVLP-BioViL-T",
)
# the model card's DDIMScheduler
RADEDIT_SCHEDULER = dict(
    beta_schedule="linear",
    clip_sample=False,
    prediction_type="epsilon",
    timestep_spacing="trailing",
    steps_offset=1,
)
BIOVIL_MAX_TOKENS = 128
# Whether RadEdit's own pipeline hands BioViL-T the attention mask could not be confirmed offline
# (BioViL-T's config has no use_attention_mask, so a stock StableDiffusionPipeline would not): the
# preset gives it, as a BERT-type encoder expects; the second preset runs it without, to compare.
RADEDIT_UNMASKED_TEXT = "radedit-unmasked-text"
PRESETS = {
    "radedit": f"RadEdit: {RADEDIT_UNET} + {RADEDIT_VAE} + {RADEDIT_TEXT} (needs trust_remote_code); "
    "the text encoder gets the attention mask",
    RADEDIT_UNMASKED_TEXT: "the radedit preset with its text encoder run without the attention mask "
    "(as a stock StableDiffusionPipeline runs BioViL-T, whose config does not ask for it)",
}


def fetch(repo_id: str, download: bool = False) -> Path:
    """A hub repository's snapshot folder: from the local cache, or downloaded if allowed."""
    from huggingface_hub import snapshot_download

    cache = os.environ.get("HF_HUB_CACHE")  # read now, so a changed cache location is honoured
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=cache))
    except Exception as exc:  # not cached (LocalEntryNotFoundError and friends)
        if not download:
            raise ModelLoadError(
                f"{repo_id} is not in the local Hugging Face cache ({cache or 'default location'}); "
                f"allow a download (CLI --download, API download=True; gated models need `hf auth login` and "
                f"their licence accepted on the hub), or copy it there with `hf download {repo_id}`"
            ) from exc
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, etag_timeout=10))
    except Exception as exc:
        reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise ModelLoadError(
            f"could not download {repo_id}: {reason} (check the network and your hub login)"
        ) from exc


def load_radedit(download: bool = False, trust_remote_code: bool = False, text_attention_mask: bool = True):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from ..editing import DiffusersDenoiser
    from .text import TransformersTextEncoder

    if not trust_remote_code:
        raise ModelLoadError(
            f"the radedit preset's text encoder, {RADEDIT_TEXT}, runs code shipped with its weights; "
            "allow it explicitly (CLI --trust-remote-code, API trust_remote_code=True) if you trust that "
            "repository"
        )
    unet_dir, vae_dir, text_dir = (fetch(r, download) for r in (RADEDIT_UNET, RADEDIT_VAE, RADEDIT_TEXT))
    unet = UNet2DConditionModel.from_pretrained(unet_dir / "unet", local_files_only=True)
    # float32 VAE: third-party reports of black images with an fp16 SDXL VAE.
    vae = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True)
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        text_dir, local_files_only=True, trust_remote_code=True, model_max_length=BIOVIL_MAX_TOKENS
    )
    text_model = AutoModel.from_pretrained(text_dir, local_files_only=True, trust_remote_code=True)
    text = TransformersTextEncoder(
        tokenizer, text_model, BIOVIL_MAX_TOKENS, use_attention_mask=text_attention_mask
    )
    name = "radedit" if text_attention_mask else RADEDIT_UNMASKED_TEXT
    return DiffusersDenoiser(
        unet,
        DDIMScheduler(**RADEDIT_SCHEDULER),
        name=name,
        text_encoder=text,
        vae=vae,
        preprocessing=preprocessing.RADEDIT,
    )


def load_composed_folder(folder: Path, config: dict, trust_remote_code: bool = False):
    """A Stable Diffusion model composed as PIE's run_pie.py composes it: the UNet from one folder (the
    fine-tune) and the VAE, text encoder, tokenizer and scheduler from another (sd-v1-4). ``config`` is
    the folder's medit.json: ``{"backend": "stable-diffusion-parts", "unet": PATH, "parts": PATH}``,
    relative paths read from ``folder``."""
    paths = {}
    for key, says in (("unet", "the UNet's folder"), ("parts", "the folder of the other parts")):
        if not config.get(key):
            raise ModelLoadError(f"{folder / 'medit.json'}: {key!r} is missing: {says}")
        paths[key] = (folder / Path(config[key]).expanduser()).resolve()
    return load_pipeline_folder(
        paths["parts"], trust_remote_code, unet_folder=paths["unet"], name=config.get("name", folder.name)
    )


def load_pipeline_folder(
    folder: Path, trust_remote_code: bool = False, unet_folder: Path | None = None, name: str | None = None
):
    """A Stable Diffusion-style folder: UNet2DConditionModel, AutoencoderKL, text encoder, scheduler;
    with ``unet_folder``, the UNet from there instead of ``folder / 'unet'``."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from ..editing import DiffusersDenoiser
    from .text import TransformersTextEncoder

    unet_folder = unet_folder or folder / "unet"
    parts = {
        "vae": folder / "vae",
        "text_encoder": folder / "text_encoder",
        "tokenizer": folder / "tokenizer",
    }
    parts = {"unet": unet_folder, **parts, "scheduler": folder / "scheduler"}
    missing = [str(path) for path in parts.values() if not path.is_dir()]
    if missing:
        raise ModelLoadError(f"{folder}: a Stable Diffusion model needs the folders {', '.join(missing)}")
    # Published folders hold safetensors or, as diffusers' converters write by default (InstructX2X's
    # does), PyTorch .bin files: diffusers and transformers read those with torch.load(weights_only=True),
    # which refuses any pickled object that is not a tensor.
    part = "unet"
    try:
        unet = UNet2DConditionModel.from_pretrained(unet_folder, local_files_only=True)
        part = "vae"
        vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True)
        part = "text_encoder"
        text = TransformersTextEncoder.from_folder(
            folder, trust_remote_code=trust_remote_code, safetensors_only=False
        )
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
        reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise ModelLoadError(
            f"{parts[part]}: could not load it ({reason}); its weights must be safetensors or "
            "a .bin of tensors only (nothing that unpickles to code)"
        ) from exc
    scheduler_config = diffusers.DDIMScheduler.load_config(folder / "scheduler")
    scheduler_class = scheduler_config.get("_class_name", "DDIMScheduler")
    if not hasattr(diffusers, scheduler_class):
        raise ModelLoadError(
            f"{folder / 'scheduler'}: diffusers {diffusers.__version__} has no {scheduler_class}; "
            "replace the scheduler config with a DDIMScheduler one"
        )
    scheduler = getattr(diffusers, scheduler_class).from_config(scheduler_config)
    # InstructPix2Pix folders: the UNet reads the prior image's latent beside the noisy one (4 + 4 channels)
    image_conditioned = unet.config.in_channels == 2 * vae.config.latent_channels
    if image_conditioned:
        check_instruction_scheduler(scheduler, folder)
    return DiffusersDenoiser(
        unet,
        scheduler,
        name=name or folder.name,
        text_encoder=text,
        vae=vae,
        preprocessing=preprocessing.STABLE_DIFFUSION,
        image_conditioned=image_conditioned,
    )


def check_instruction_scheduler(scheduler, folder: Path) -> None:
    """Instruction models are sampled with their own scheduler, as diffusers' InstructPix2Pix
    pipeline does: refuse one that cannot run that loop or that predicts anything but noise."""
    from ..editing.instruct import INSTRUCTION_SCHEDULER_NEEDS

    missing = [name for name in INSTRUCTION_SCHEDULER_NEEDS if not hasattr(scheduler, name)]
    if missing:
        raise ModelLoadError(
            f"{folder}: its {type(scheduler).__name__} has no {missing[0]}, which instruction "
            "editing needs; use a DDIM, DDPM, Euler or Euler ancestral scheduler config"
        )
    prediction = getattr(scheduler.config, "prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ModelLoadError(
            f"{folder}: the scheduler says prediction_type={prediction!r}; napari-medit's "
            "instruction editing supports epsilon-prediction models only"
        )


def describe_presets() -> list[dict]:
    """The published-model presets and whether their parts are in the local cache (no network)."""
    cached = {}
    for repo in (RADEDIT_UNET, RADEDIT_VAE, RADEDIT_TEXT):
        try:
            fetch(repo, download=False)
            cached[repo] = True
        except ModelLoadError:
            cached[repo] = False
    return [
        {
            "name": name,
            "description": description,
            "backend": "diffusers (latent)",
            "resolution": 512,
            "text_conditioned": True,
            "mask_conditions": [],
            "methods": ["radedit", "pie", "sdedit", "diffedit"],
            "cached": cached,
            "preset": True,
        }
        for name, description in PRESETS.items()
    ]
