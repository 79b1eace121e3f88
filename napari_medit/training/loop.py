"""The training loop every model shares: epsilon-prediction DDPM loss, AdamW,
optional EMA weights, checkpoints that resume exactly, a progress bar, a loss
log and validation samples."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    out: Path
    steps: int = 2000
    batch_size: int = 8
    learning_rate: float = 2e-4
    warmup: int = 100
    seed: int = 0
    validate_every: int = 500
    checkpoint_every: int = 250
    device: str = "cpu"
    # Exponential moving average of the weights (0 = off). Validation samples and the saved
    # model use the averaged weights; DDPM (Ho et al.) and ADM train with 0.9999 over far longer runs.
    ema_decay: float = 0.0
    # Store the saved diffusion model's weights in float16: half the size on disk. Loading gives
    # float32 networks either way (the GPU runs them in half precision regardless).
    save_float16: bool = False


def train(
    config: TrainConfig,
    modules: dict[str, torch.nn.Module],
    loss_fn: Callable[[dict, torch.Generator], torch.Tensor],
    batches: Callable[[int], Iterator[dict]],
    validate: Callable[[int], None] | None = None,
    resume: bool = False,
) -> list[float]:
    """Run ``config.steps`` optimisation steps of ``loss_fn`` over ``batches(start_step)``.

    ``modules`` are the trained networks (their parameters share one AdamW).
    With ``resume``, training continues from ``out/checkpoint.pt``: the weights,
    their moving averages, the optimiser, the step count, the noise generator
    and the loss log. With ``config.ema_decay`` the modules hold the averaged
    weights while ``validate`` runs and when training returns.
    """
    from torch.optim.swa_utils import AveragedModel
    from tqdm.auto import tqdm

    if not 0.0 <= config.ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {config.ema_decay}")

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    parameters = [p for m in modules.values() for p in m.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, config.warmup))
    )
    generator = torch.Generator().manual_seed(config.seed)
    averages = (
        {
            name: AveragedModel(m, multi_avg_fn=ema_with_warmup(config.ema_decay))
            for name, m in modules.items()
        }
        if config.ema_decay
        else {}
    )
    step, losses = 0, []
    if resume:
        step, losses = _load_checkpoint(out / CHECKPOINT, modules, averages, optimizer, schedule, generator)
    for module in modules.values():
        module.train()
    data = batches(step)  # seeded by the step it starts at, so a resumed run sees fresh batches
    device = parameters[0].device
    precision = training_precision(device)
    started = time.perf_counter()
    with tqdm(total=config.steps, initial=step, desc="training", unit="step") as bar:
        while step < config.steps:
            batch = next(data)
            with torch.autocast(device.type, dtype=precision, enabled=precision is not torch.float32):
                loss = loss_fn(batch, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            schedule.step()
            for name, average in averages.items():
                average.update_parameters(modules[name])
            step += 1
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
            if step % config.checkpoint_every == 0 or step == config.steps:
                _save_checkpoint(
                    out / CHECKPOINT, step, losses, modules, averages, optimizer, schedule, generator
                )
            if validate is not None and (step % config.validate_every == 0 or step == config.steps):
                for module in modules.values():
                    module.eval()
                with torch.no_grad(), _averaged_weights(modules, averages):
                    validate(step)
                for module in modules.values():
                    module.train()
    (out / "training_log.json").write_text(
        json.dumps(
            {
                "steps": step,
                "batch_size": config.batch_size,
                "learning_rate": config.learning_rate,
                "precision": str(precision).removeprefix("torch."),
                "seed": config.seed,
                "ema_decay": config.ema_decay,
                "seconds_this_run": round(time.perf_counter() - started, 1),
                "loss_first_100": _mean(losses[:100]),
                "loss_last_100": _mean(losses[-100:]),
                "loss_per_10_steps": [_mean(losses[i : i + 10]) for i in range(0, len(losses), 10)],
            },
            indent=2,
        )
    )
    for module in modules.values():
        module.eval()
    for name, average in averages.items():  # what the caller saves is the averaged model
        _copy_parameters(average.module.parameters(), modules[name])
    return losses


def training_precision(device: torch.device) -> torch.dtype:
    """bfloat16 autocast where the device computes it natively (a CPU with AVX512-BF16 or AMX, a CUDA
    GPU that supports it: no loss scaling needed, unlike float16), float32 elsewhere."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    from ..editing.run import network_precision

    return network_precision("auto", device) if device.type == "cpu" else torch.float32


def ema_with_warmup(decay: float):
    """EMA whose decay grows as (1 + n) / (10 + n) up to ``decay`` (diffusers' EMAModel.get_decay):
    a fixed 0.999 from the first step would still hold 0.999**2000 = 13% of the random
    initial weights after 2,000 steps."""

    def update(averaged, current, num_averaged):
        n = int(num_averaged)
        rate = min(decay, (1 + n) / (10 + n))
        for average, value in zip(averaged, current, strict=True):
            average.lerp_(value, 1 - rate)

    return update


@contextmanager
def _averaged_weights(modules: dict[str, torch.nn.Module], averages: dict):
    """Swap the averaged weights in for a while (validation), then put the live ones back."""
    live = {name: [p.detach().clone() for p in modules[name].parameters()] for name in averages}
    for name, average in averages.items():
        _copy_parameters(average.module.parameters(), modules[name])
    try:
        yield
    finally:
        for name, saved in live.items():
            _copy_parameters(saved, modules[name])


def _copy_parameters(values, target: torch.nn.Module) -> None:
    # Parameters only: the averaged copy does not track buffers (integer position ids cannot be averaged).
    with torch.no_grad():
        for p, value in zip(target.parameters(), values, strict=True):
            p.copy_(value)


def extra_levels(resolution: int) -> int:
    """UNet levels the demo networks add to their 64 px design: one per doubling of the resolution."""
    return max(0, (resolution // 64).bit_length() - 1)


def noised(x0: torch.Tensor, alphas_cumprod: torch.Tensor, generator: torch.Generator):
    """The DDPM training input: (x_t, t, noise) with t uniform over the training timesteps."""
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],), generator=generator).to(x0.device)
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise, t, noise


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 5) if values else None


def _save_checkpoint(path, step, losses, modules, averages, optimizer, schedule, generator) -> None:
    temporary = path.with_suffix(".partial")
    torch.save(
        {
            "step": step,
            "losses": losses,
            "modules": {name: m.state_dict() for name, m in modules.items()},
            "averages": {name: a.state_dict() for name, a in averages.items()},
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "generator": generator.get_state(),
        },
        temporary,
    )
    temporary.replace(path)  # a crash mid-write never leaves a broken checkpoint


def _load_checkpoint(path, modules, averages, optimizer, schedule, generator):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    # Tensors and plain containers only: no pickled code runs.
    state = torch.load(path, map_location="cpu", weights_only=True)
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])
    saved_averages = state.get("averages", {})
    if set(saved_averages) != set(averages):
        raise ValueError(
            f"{path}: the checkpoint was trained with a different --ema-decay setting "
            "(EMA on in one, off in the other); resume with the setting it was started with"
        )
    for name, average in averages.items():
        average.load_state_dict(saved_averages[name])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    generator.set_state(state["generator"])
    return int(state["step"]), list(state["losses"])
