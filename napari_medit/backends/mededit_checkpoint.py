"""Import a checkpoint of the official MedEdit code (Malekba98/MedEdit) as a model folder.

Its checkpoints hold ``{"model_weights": state_dict}`` with keys prefixed ``unet.``, for
a MONAI-Generative ``DiffusionModelUNet`` (``num_channels`` naming, older attention key
names: MONAI's ``load_old_state_dict`` maps them). The network is MedEdit's: 2D,
[image, pathology mask, brain mask] -> noise, channels (128, 256, 256), attention
(False, True, True), one res block; 256 channels per attention head as in MONAI's 2D DDPM
tutorial it derives from (override if your checkpoint differs). 128 x 128 slices in [0, 1],
1000 DDPM steps with linear betas 1e-4..2e-2.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .folder import ModelLoadError, save_model

MEDEDIT_NETWORK = dict(
    spatial_dims=2,
    in_channels=3,
    out_channels=1,
    channels=[128, 256, 256],
    attention_levels=[False, True, True],
    num_res_blocks=1,
    num_head_channels=256,
)
MEDEDIT_SCHEDULER = {
    "class": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "schedule": "linear_beta",
    "beta_start": 1e-4,
    "beta_end": 2e-2,
}


def import_mededit(
    checkpoint: str | Path, out: str | Path, network: dict | None = None, resolution: int = 128
) -> Path:
    from monai.networks.nets import DiffusionModelUNet
    from monai.networks.schedulers import DDPMScheduler

    from .. import preprocessing
    from ..editing import MonaiDenoiser

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ModelLoadError(f"{checkpoint}: no such checkpoint")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"{checkpoint}: the checkpoint holds pickled Python objects besides tensors, and loading it "
            "would run their code; re-save only the state dict (torch.save(model.state_dict(), ...))"
        ) from exc
    except Exception as exc:
        raise ModelLoadError(
            f"{checkpoint}: not a readable PyTorch checkpoint ({str(exc).splitlines()[0]})"
        ) from exc
    weights = state.get("model_weights", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ModelLoadError(f"{checkpoint}: expected a state dict or {{'model_weights': state_dict}}")
    weights = {k.removeprefix("unet."): v for k, v in weights.items()}
    config = {**MEDEDIT_NETWORK, **(network or {})}
    model = DiffusionModelUNet(**config)
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        try:  # MONAI-Generative-era attention names
            model.load_old_state_dict(weights)
        except Exception as exc:
            raise ModelLoadError(
                f"{checkpoint}: the weights do not fit MedEdit's network {config} "
                f"({str(exc).splitlines()[0][:200]}); pass the network arguments your checkpoint was trained "
                f"with"
            ) from exc
    scheduler = DDPMScheduler(**{k: v for k, v in MEDEDIT_SCHEDULER.items() if k != "class"})
    # its 8-bit PNG slices, padded
    denoiser = MonaiDenoiser(
        model,
        scheduler,
        resolution=resolution,
        name=Path(out).name,
        condition_names=("pathology_mask", "brain_mask"),
        preprocessing=preprocessing.MEDEDIT,
    )
    return save_model(
        out,
        denoiser,
        {
            "name": Path(out).name,
            "resolution": resolution,
            "value_range": [0, 1],
            "condition_names": ["pathology_mask", "brain_mask"],
            "network": config,
            "scheduler": MEDEDIT_SCHEDULER,
            "imported_from": str(checkpoint),
        },
    )
