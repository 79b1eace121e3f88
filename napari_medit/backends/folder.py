"""The napari-medit model folder: weights in safetensors plus a small config.

    my-model/
      medit.json            what the model is (below)
      unet/                 diffusers backend: a diffusers model folder (config.json + safetensors)
      scheduler/            diffusers backend: scheduler_config.json
      text_encoder/, tokenizer/   text-conditioned diffusers models: transformers folders
      model.safetensors     monai backend: the DiffusionModelUNet state dict

medit.json:
    {"format": "napari-medit-model/1", "name": "...", "backend": "diffusers" | "monai",
     "resolution": 64, "value_range": [0, 1], "condition_names": ["pathology_mask", "brain_mask"],
     "network": {...DiffusionModelUNet arguments (monai)...},
     "scheduler": {"class": "DDPMScheduler", ...its config (monai)...},
     "text_encoder": {"max_length": 77, "use_attention_mask": false},
     "image_conditioned": true,   (an instruction model: the UNet reads the prior image beside x_t)
     "preprocessing": {"fit": "pad" | "center-crop", "intensity": "window" | "min-max" | "8-bit"}}

"preprocessing" says how the model was trained to see slices (napari_medit.preprocessing);
absent, it is what napari-medit's own training uses: pad + window.

Everything is read from local files: nothing touches the network, and no pickle is loaded.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from ..editing.denoiser import Denoiser, DiffusersDenoiser, MonaiDenoiser
from ..preprocessing import Preprocessing
from ..results import ModelLoadError
from .registry import CONFIG_NAME, PARTS_BACKEND

FORMAT = "napari-medit-model/1"


def load_model(
    path: str | Path,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    download: bool = False,
) -> Denoiser:
    """Load a model: a napari-medit model folder, a bundled or NAPARI_MEDIT_MODELS name
    (``demo-brain``, ``demo-cxr``), a preset (``radedit``), a Stable Diffusion-style folder, a Stable
    Diffusion 1.x checkpoint file in its original layout (``.ckpt``, ``.safetensors``), or a
    hub repository, ``hub:ORG/NAME`` or ``ORG/NAME`` when no such local folder exists
    (``microsoft/radedit`` is the radedit preset). Only ``download=True`` lets anything reach the network, and
    ``trust_remote_code`` (off unless the user opts in) lets a text encoder run code shipped
    with its weights (BioViL-T needs it)."""
    from .quiet import quiet_loading

    with quiet_loading():
        return _load(path, device, trust_remote_code, download)


def _load(path, device, trust_remote_code: bool, download: bool) -> Denoiser:
    from . import presets
    from .registry import hub_repository, resolve
    from .single_file import SINGLE_FILE_SUFFIXES, load_stable_diffusion_checkpoint

    spec = str(path)
    if spec in presets.PRESETS:
        return _to_device(
            presets.load_radedit(
                download, trust_remote_code, text_attention_mask=spec != presets.RADEDIT_UNMASKED_TEXT
            ),
            device,
        )
    repository = hub_repository(spec)
    # the published RadEdit UNet: the preset brings its VAE and text encoder
    if repository == presets.RADEDIT_UNET:
        return _to_device(presets.load_radedit(download, trust_remote_code), device)
    if repository is not None:  # offline unless download=True: a missing repository fails at once
        folder = presets.fetch(repository, download)
        return _to_device(presets.load_pipeline_folder(folder, trust_remote_code), device)
    single_file = Path(spec).expanduser()
    if single_file.is_file() and single_file.suffix in SINGLE_FILE_SUFFIXES:
        return _to_device(load_stable_diffusion_checkpoint(single_file), device)
    folder = resolve(path)
    if not (folder / CONFIG_NAME).is_file() and (folder / "model_index.json").is_file():
        return _to_device(presets.load_pipeline_folder(folder, trust_remote_code), device)
    config_path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: no such model folder")
    if not config_path.is_file():
        raise ModelLoadError(f"{folder}: not a napari-medit model folder (no {CONFIG_NAME})")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{config_path}: not valid JSON ({exc})") from None
    if config.get("format") != FORMAT:
        raise ModelLoadError(f"{config_path}: unknown format {config.get('format')!r}; expected {FORMAT!r}")
    backend = config.get("backend")
    if backend == PARTS_BACKEND:  # no preprocessing of its own: Stable Diffusion's
        return _to_device(presets.load_composed_folder(folder, config, trust_remote_code), device)
    try:
        config["preprocessing"] = Preprocessing.from_config(config.get("preprocessing"))
    except ValueError as exc:
        raise ModelLoadError(f"{config_path}: {exc}") from None
    try:
        if backend == "monai":
            denoiser = _load_monai(folder, config)
        elif backend == "diffusers":
            denoiser = _load_diffusers(folder, config, trust_remote_code)
        else:
            raise ModelLoadError(
                f"{config_path}: backend must be 'diffusers', 'monai' or '{PARTS_BACKEND}', got {backend!r}"
            )
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, ModelLoadError):
            raise
        raise ModelLoadError(f"{folder}: cannot load the model ({str(exc).splitlines()[0]})") from exc
    return _to_device(denoiser, device)


def save_model(folder: str | Path, denoiser: Denoiser, config: dict[str, Any], float16: bool = False) -> Path:
    """Write a Denoiser built from diffusers or MONAI parts as a model folder.

    ``float16`` stores the denoising network's weights in half precision (half the size on disk;
    ``load_model`` gives float32 networks either way). The text encoder is kept in float32."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, **config, "preprocessing": denoiser.preprocessing.as_config()}
    if denoiser.image_conditioned:
        config["image_conditioned"] = True
    if isinstance(denoiser, MonaiDenoiser):
        from safetensors.torch import save_file

        config["backend"] = "monai"
        state = {k: _stored(v, float16) for k, v in denoiser.model.state_dict().items()}
        save_file(state, folder / "model.safetensors")
    elif isinstance(denoiser, DiffusersDenoiser):
        config["backend"] = "diffusers"
        # the live network stays float32
        unet = copy.deepcopy(denoiser.unet).half() if float16 else denoiser.unet
        unet.save_pretrained(folder / "unet", safe_serialization=True)
        denoiser.schedule.scheduler.save_pretrained(folder / "scheduler")
        if denoiser.text_encoder is not None:
            denoiser.text_encoder.save(folder)
    else:
        raise TypeError(f"cannot save a {type(denoiser).__name__}")
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return folder


def _stored(tensor: torch.Tensor, float16: bool) -> torch.Tensor:
    tensor = tensor.detach().cpu().contiguous()
    return tensor.half() if float16 and tensor.is_floating_point() else tensor


def _load_monai(folder: Path, config: dict) -> MonaiDenoiser:
    from monai.networks import schedulers
    from monai.networks.nets import DiffusionModelUNet
    from safetensors.torch import load_file

    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(f"{folder}: no model.safetensors weights")
    model = DiffusionModelUNet(**config["network"])
    state = load_file(weights)  # float16 weights are copied into the float32 network
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelLoadError(
            f"{weights}: weights do not match the network in {CONFIG_NAME} "
            f"({len(missing)} missing, {len(unexpected)} unexpected tensors, e.g. "
            f"{(missing + unexpected)[0]})"
        )
    scheduler_config = dict(config["scheduler"])
    scheduler = getattr(schedulers, scheduler_config.pop("class"))(**scheduler_config)
    return MonaiDenoiser(
        model,
        scheduler,
        resolution=int(config["resolution"]),
        name=config.get("name", folder.name),
        condition_names=config.get("condition_names", ()),
        value_range=tuple(config.get("value_range", (0, 1))),
        preprocessing=config["preprocessing"],
    )


def _load_diffusers(folder: Path, config: dict, trust_remote_code: bool) -> DiffusersDenoiser:
    import diffusers

    unet_folder = folder / "unet"
    if not (unet_folder / "config.json").is_file():
        raise ModelLoadError(f"{folder}: no unet/config.json")
    unet_class = json.loads((unet_folder / "config.json").read_text()).get("_class_name", "UNet2DModel")
    if unet_class not in ("UNet2DModel", "UNet2DConditionModel"):
        raise ModelLoadError(f"{unet_folder}: unsupported network {unet_class}")
    # float32 whatever the stored precision: CPUs compute in it, and _to_device halves for CUDA.
    unet = getattr(diffusers, unet_class).from_pretrained(
        unet_folder, use_safetensors=True, local_files_only=True, torch_dtype=torch.float32
    )
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    if not scheduler_file.is_file():
        raise ModelLoadError(f"{folder}: no scheduler/scheduler_config.json")
    scheduler_class = json.loads(scheduler_file.read_text()).get("_class_name", "DDPMScheduler")
    scheduler = getattr(diffusers, scheduler_class).from_pretrained(
        folder / "scheduler", local_files_only=True
    )
    text_encoder = None
    if unet_class == "UNet2DConditionModel":
        from .text import TransformersTextEncoder

        missing = [name for name in ("text_encoder", "tokenizer") if not (folder / name).is_dir()]
        if missing:
            raise ModelLoadError(
                f"{folder}: a text-conditioned UNet needs {' and '.join(missing)}/ beside it"
            )
        options = config.get("text_encoder", {})
        text_encoder = TransformersTextEncoder.from_folder(
            folder, options.get("max_length"), options.get("use_attention_mask"), trust_remote_code
        )
    image_conditioned = bool(config.get("image_conditioned", False))
    if image_conditioned:
        from .presets import check_instruction_scheduler

        check_instruction_scheduler(scheduler, folder)
    return DiffusersDenoiser(
        unet,
        scheduler,
        name=config.get("name", folder.name),
        condition_names=config.get("condition_names", ()),
        text_encoder=text_encoder,
        value_range=tuple(config.get("value_range", (-1, 1))),
        preprocessing=config["preprocessing"],
        image_conditioned=image_conditioned,
    )


def pick_device(requested: str | torch.device | None) -> torch.device:
    """``None``/'auto': CUDA, else Apple MPS, else the CPU; an explicit device must exist."""
    if requested in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device '{requested}' was requested but this machine has no CUDA GPU; use --device cpu"
        )
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ModelLoadError(
            f"device '{requested}' was requested but MPS is not available here; use --device cpu"
        )
    return device


def _to_device(denoiser: Denoiser, device) -> Denoiser:
    device = pick_device(device)
    if device.type == "cpu":
        # channels_last measured faster on CPU for every UNet kind (benchmarks/results/precision-cpu.md)
        return denoiser.use_memory_format(torch.channels_last)
    # float32 weights everywhere: each edit's `precision` autocasts the UNet's forward passes (float16 on
    # CUDA by default); VAEs always compute in float32 (fp16 SDXL VAEs decode to black).
    denoiser.network.to(device)
    if denoiser.text_encoder is not None:
        denoiser.text_encoder.model.to(device)
    if getattr(denoiser, "vae", None) is not None:
        denoiser.vae.to(device)
    return denoiser
