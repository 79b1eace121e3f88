"""Stable Diffusion 1.x checkpoints as their authors release them: one ``.ckpt`` or ``.safetensors`` in
the original (CompVis/LDM) key layout, as InstructX2X and InstructPix2Pix publish theirs.

diffusers reads such a file part by part (``from_single_file``), but it fetches each part's
configuration from the hub. Here the parts' configurations come with the package
(``stable_diffusion_v1/``: sd-v1-4's UNet, VAE, CLIP ViT-L/14 text encoder and tokenizer, and the PNDM
scheduler its converter writes), so a checkpoint loads offline, into exactly what
``convert_original_stable_diffusion_to_diffusers`` (and InstructX2X's copy of it) would have written:
the non-EMA weights, the UNet's input channels read from the checkpoint (8 for InstructPix2Pix).
"""

from __future__ import annotations

import pickle
from pathlib import Path

from ..results import ModelLoadError

SD1_CONFIGS = Path(__file__).resolve().parent / "stable_diffusion_v1"
SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors")

# Where each part's weights sit in an SD 1.x checkpoint
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # Stable Diffusion 2.x's text encoder


def read_state(path: Path) -> dict:
    """The checkpoint's tensors by name: safetensors as they are, a ``.ckpt`` through
    ``torch.load(weights_only=True)`` (which refuses anything that would unpickle to code)."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        # torch's refusal of a pickle is a page long: what it means here is said in one line
        unpickling = isinstance(exc, pickle.UnpicklingError)
        reason = "not a pickle of tensors only" if unpickling else (str(exc).strip() or type(exc).__name__)
        reason = reason.splitlines()[0]
        raise ModelLoadError(
            f"{path}: cannot read it as a checkpoint ({reason}); it must be a Stable Diffusion .ckpt of "
            "tensors only (nothing that unpickles to code) or a .safetensors file"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # PyTorch Lightning's wrapping, as LDM training saves it
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: holds a {type(state).__name__}, not a dictionary of weights")
    return state


def check_layout(path: Path, state: dict) -> int:
    """Refuse what is not an SD 1.x checkpoint, naming what it is; the UNet's input channels."""
    if any(key.startswith(OPEN_CLIP_PREFIX) for key in state):
        raise ModelLoadError(
            f"{path}: a Stable Diffusion 2.x checkpoint (OpenCLIP text encoder); napari-medit loads 1.x "
            "checkpoints as files: convert this one with diffusers' "
            "convert_original_stable_diffusion_to_diffusers script and pass that folder"
        )
    missing = [
        part
        for part, prefix in (("UNet", UNET_PREFIX), ("VAE", VAE_PREFIX), ("CLIP text encoder", CLIP_PREFIX))
        if not any(key.startswith(prefix) for key in state)
    ]
    if missing:
        prefixes = sorted({key.split(".", 1)[0] for key in state})
        raise ModelLoadError(
            f"{path}: not a Stable Diffusion 1.x checkpoint: no {', no '.join(missing)} weights "
            f"(it holds {', '.join(prefixes[:6]) or 'nothing'}); single files load only as SD 1.x "
            "checkpoints in their original layout: pass any other model as a folder (docs/models.md)"
        )
    return int(state[f"{UNET_PREFIX}input_blocks.0.0.weight"].shape[1])


def load_stable_diffusion_checkpoint(path: str | Path, configs: Path | None = None):
    """A DiffusersDenoiser from one SD 1.x checkpoint file, offline: each part converted by diffusers
    into the configurations in ``configs``, a folder laid out as a diffusers pipeline's (None: the
    shipped SD 1.x ones)."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTokenizer

    from .. import preprocessing
    from ..editing import DiffusersDenoiser
    from .presets import check_instruction_scheduler
    from .text import TransformersTextEncoder

    path, configs = Path(path).expanduser(), configs or SD1_CONFIGS
    state = read_state(path)
    in_channels = check_layout(path, state)
    where = {"config": str(configs), "local_files_only": True}
    try:
        unet = UNet2DConditionModel.from_single_file(
            state, subfolder="unet", in_channels=in_channels, **where
        )
        vae = AutoencoderKL.from_single_file(state, subfolder="vae", **where)
        text_model = create_diffusers_clip_model_from_ldm(
            CLIPTextModel, state, subfolder="text_encoder", **where
        )
        tokenizer = CLIPTokenizer.from_pretrained(configs / "tokenizer", local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise ModelLoadError(
            f"{path}: its weights do not fit Stable Diffusion 1.x's parts ({reason})"
        ) from exc
    scheduler = diffusers.PNDMScheduler.from_pretrained(configs / "scheduler", local_files_only=True)
    image_conditioned = in_channels == 2 * vae.config.latent_channels
    if image_conditioned:
        check_instruction_scheduler(scheduler, path)
    return DiffusersDenoiser(
        unet,
        scheduler,
        name=path.stem,
        text_encoder=TransformersTextEncoder(tokenizer, text_model, tokenizer.model_max_length),
        vae=vae,
        preprocessing=preprocessing.STABLE_DIFFUSION,
        image_conditioned=image_conditioned,
    )
