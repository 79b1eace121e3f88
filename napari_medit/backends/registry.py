"""Model names: the bundled demo models, folders on NAPARI_MEDIT_MODELS, and paths.

Nothing here imports torch: widgets list and describe models from their JSON alone."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..results import ModelLoadError
from .presets import PRESETS

BUNDLED = Path(__file__).resolve().parents[1] / "models"
SEARCH_PATH_VARIABLE = "NAPARI_MEDIT_MODELS"  # extra folders holding model folders, os.pathsep-separated
CONFIG_NAME = "medit.json"
# ORG/NAME, as diffusers users type it
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def model_folders() -> dict[str, Path]:
    """Every known model folder by name: bundled first, then the search path's."""
    roots = [BUNDLED] + [
        Path(p).expanduser() for p in os.environ.get(SEARCH_PATH_VARIABLE, "").split(os.pathsep) if p
    ]
    found: dict[str, Path] = {}
    for root in roots:
        if root.is_dir():
            for config in sorted(root.glob(f"*/{CONFIG_NAME}")):
                found.setdefault(config.parent.name, config.parent)
    return found


def hub_repository(spec: str) -> str | None:
    """The hub repository ``spec`` names ('hub:ORG/NAME', or 'ORG/NAME' when no such local folder exists)."""
    if spec.startswith("hub:"):
        return spec[4:]
    if _HUB_ID.match(spec) and not Path(spec).expanduser().exists():
        return spec
    return None


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A model folder from a path or a known name; the error lists what is known."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        raise ModelLoadError(single_file_problem(path))
    folders = model_folders()
    if str(name_or_path) in folders:
        return folders[str(name_or_path)]
    if os.sep in str(name_or_path) or str(name_or_path).startswith((".", "~")):
        raise ModelLoadError(f"{path}: no such model folder")
    known = ", ".join([*folders, *PRESETS]) or "none"
    raise ModelLoadError(
        f"unknown model '{name_or_path}': not a folder, and not a known name (known: {known}); "
        f"a Stable Diffusion-style hub repository is hub:ORG/NAME; add model folders of your own "
        f"with {SEARCH_PATH_VARIABLE}=/path/to/models"
    )


def single_file_problem(path: Path) -> str:
    """What to do with one checkpoint file given where a model folder is expected."""
    if path.suffix in (".pt", ".pth"):
        return (
            f"{path}: a single checkpoint file; a MedEdit checkpoint becomes a model folder with "
            f"`napari-medit import-mededit {path} --out FOLDER` (once), then pass FOLDER"
        )
    return (
        f"{path}: a single checkpoint file of a kind napari-medit does not load; it loads model folders, "
        "MedEdit .pt checkpoints through `napari-medit import-mededit`, and Stable Diffusion 1.x "
        ".ckpt/.safetensors files (InstructX2X's, InstructPix2Pix's) as they are"
    )


PARTS_BACKEND = "stable-diffusion-parts"  # a folder whose UNet and other parts come from two folders


def _composed(folder: Path, config: dict) -> dict:
    """A composed folder's facts, from its parts' configs: text-conditioned, its resolution and whether
    its UNet reads a prior image (InstructPix2Pix); what cannot be read stays unknown."""
    try:
        unet_folder, parts = (folder / Path(config[key]).expanduser() for key in ("unet", "parts"))
        unet = json.loads((unet_folder / "config.json").read_text())
        vae = json.loads((parts / "vae" / "config.json").read_text())
    except (KeyError, TypeError, OSError, ValueError):
        return {"text_encoder": {}}
    factor = 2 ** (len(vae.get("block_out_channels", [0])) - 1)
    return {
        "text_encoder": {},
        "resolution": int(unet.get("sample_size", 0)) * factor or None,
        "image_conditioned": unet.get("in_channels") == 2 * vae.get("latent_channels", 4),
    }


def describe(folder: Path) -> dict:
    """What a model folder is, read from its config alone (no weights are loaded)."""
    from ..catalogue import METHODS

    config = json.loads((folder / CONFIG_NAME).read_text())
    if config.get("backend") == PARTS_BACKEND:
        config = {**config, **_composed(folder, config)}
    conditions = list(config.get("condition_names", []))
    text = (folder / "text_encoder").is_dir() or "text_encoder" in config
    image_conditioned = bool(config.get("image_conditioned", False))
    methods = [
        m.name for m in METHODS.values() if m.model_problem(text, conditions, image_conditioned) is None
    ]
    return {
        "name": folder.name,
        "path": str(folder),
        "backend": config.get("backend"),
        "resolution": config.get("resolution"),
        "text_conditioned": text,
        "mask_conditions": conditions,
        "methods": methods,
        "prompts": config.get("prompts"),
        "bundled": folder.parent == BUNDLED,
    }
