"""One protocol every editing method runs on, whatever the model.

A ``Denoiser`` predicts the noise in a batch ``x_t`` at timestep ``t`` given
text embeddings (cross-attention) and/or mask images concatenated as input
channels, and says what it needs: resolution, channels, intensity range,
pixel or latent space. Its noise schedule is a diffusers or MONAI scheduler
object, wrapped in ``NoiseSchedule``.

Implemented here: diffusers ``UNet2DModel`` / ``UNet2DConditionModel`` (+ an
optional VAE), MONAI ``DiffusionModelUNet``, and an analytic Gaussian
denoiser whose exact answers make strong tests possible.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import platform
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..preprocessing import Preprocessing
from .ddpm import NoiseSchedule
from .feature_cache import FeatureCache, walk_of

TextEncoder = Callable[[Sequence[str]], torch.Tensor]  # prompts -> (B, tokens, dim)


class Denoiser:
    """Base class: pixel-space, unconditional. Subclasses override what differs."""

    name: str = "unnamed"
    resolution: int = 64
    image_channels: int = 1  # channels of the images the method sees (grayscale)
    latent_channels: int = 1  # channels the diffusion runs on (== image_channels in pixel space)
    latent_factor: int = 1  # image pixels per diffusion cell (8 for Stable Diffusion VAEs)
    value_range: tuple[float, float] = (-1.0, 1.0)
    condition_names: tuple[str, ...] = ()  # masks concatenated to x_t, in this order
    image_conditioned: bool = False  # the prior image (its latent) follows x_t on channels (InstructPix2Pix)
    preprocessing: Preprocessing = Preprocessing()  # how slices are fit to the grid and intensities mapped
    schedule: NoiseSchedule
    evaluations: int = 0  # forward passes so far, counted per batch item (an edit's own view counts its own)
    compute_dtype: torch.dtype | None = None  # the network's arithmetic during an edit (None: its own)
    feature_cache: FeatureCache | None = None  # an edit's deep features reused between steps (None: off)

    def for_edit(
        self, dtype: torch.dtype | None = None, *, compiled: bool = False, cache_interval: int = 1
    ) -> Denoiser:
        """This model as one edit uses it: the weights shared, read-only, with every other edit (in
        other threads of a worker too); what an edit changes, its own: a scheduler of its own (diffusers'
        schedulers keep their timesteps and multistep history on the object, and are not thread-safe),
        an evaluation count from zero, the network's precision and compilation, and its feature cache.
        ValueError when the model cannot cache features (``cache_interval`` > 1)."""
        own = copy.copy(self)
        own.schedule = self.schedule.own()
        own.evaluations = 0
        own._configure(dtype, compiled)
        own.feature_cache = None
        if cache_interval > 1:
            own._start_cache(cache_interval)
        return own

    def _configure(self, dtype: torch.dtype | None, compiled: bool) -> None:
        """A model without a network (the analytic one) computes in its own precision, uncompiled."""

    def _start_cache(self, interval: int) -> None:
        raise ValueError(f"cache_interval reuses a network's features; {self.name} has no network: use 1")

    @property
    def text_conditioned(self) -> bool:
        return False

    @property
    def latent(self) -> bool:
        return self.latent_factor > 1

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def weights_hash(self) -> str:
        return "none"

    def encode(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Images in the model's value range -> what the diffusion runs on. A VAE returns its
        posterior mean, or with ``noise`` (standard normal, latent-shaped) a posterior sample."""
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def encode_prior(self, images: torch.Tensor) -> torch.Tensor:
        """The prior image as an image-conditioned model reads it beside x_t: the image itself in
        pixel space; with a VAE, its posterior mode, *not* scaled (InstructPix2Pix was trained so)."""
        return images

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor | None:
        return None

    def model_output(
        self, x_t, t: int, text: torch.Tensor | None, conditions: torch.Tensor | None
    ) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x_t, t: int, text=None, conditions=None) -> torch.Tensor:
        """The noise estimate eps(x_t, t, c); without text, a text-conditioned model is asked
        unconditionally (the empty prompt), so methods that edit by masks alone run on it too."""
        if text is None and self.text_conditioned:
            text = self.embed([""], x_t.shape[0])[0]
        self.evaluations += x_t.shape[0]
        out = self.model_output(x_t, t, text, conditions)
        return self.schedule.to_epsilon(out, x_t, t)

    def embed(self, prompts: Sequence[str], batch: int) -> list[torch.Tensor | None]:
        """Each prompt's embedding repeated over a batch (None for models without text)."""
        if not self.text_conditioned:
            return [None] * len(prompts)
        return [e[None].expand(batch, *e.shape).to(self.device) for e in self.encode_text(prompts)]

    def guided(self, x_t, t: int, text, null_text, guidance: float, conditions=None):
        """Classifier-free guidance: (eps_u + w (eps_c - eps_u), eps_u), both passes in one
        forward call of the doubled batch. Without text, both are the model's eps."""
        if text is None:
            eps = self(x_t, t, None, conditions)
            return eps, eps
        both = self(
            torch.cat([x_t, x_t]),
            t,
            torch.cat([null_text, text]),
            None if conditions is None else torch.cat([conditions, conditions]),
        )
        eps_u, eps_c = both.chunk(2)
        return eps_u + guidance * (eps_c - eps_u), eps_u


def state_hash(module: torch.nn.Module) -> str:
    """A short SHA-256 over a module's tensors: identifies the weights in provenance."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class NetworkDenoiser(Denoiser):
    """A Denoiser around a torch network (``self.network``) with an optional text encoder."""

    network: torch.nn.Module
    text_encoder: TextEncoder | None = None
    _hash: str | None = None
    memory_format: torch.memory_format = torch.contiguous_format  # the network's and its inputs' layout
    compile_backend: str = "inductor"  # torch.compile's own default (the tests trace with "eager")
    _run_compiled: bool = False

    def __init__(self):
        # Compiled forms are made once per loaded model and shared by its edits' views.
        self._compiled: dict[tuple[str, str], Callable] = {}
        self._compile_lock = threading.Lock()

    def use_memory_format(self, memory_format: torch.memory_format) -> NetworkDenoiser:
        """Lay the network's weights (and, at each call, its inputs) out as ``memory_format``; a
        layout the network cannot take (channels_last on a 3D network) leaves it as it is."""
        try:
            self.network.to(memory_format=memory_format)
        except RuntimeError:
            return self
        self.memory_format = memory_format
        return self

    def _laid_out(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=self.memory_format) if x.ndim == 4 else x

    def _configure(self, dtype: torch.dtype | None, compiled: bool) -> None:
        """The edit's forward passes autocast to ``dtype`` (weights stay float32, so one loaded model
        serves every precision); float32 turns autocast off. ``compiled``: they go through
        ``torch.compile`` of the network, compiled on the first pass and kept with the loaded model,
        so later edits on it pay nothing more (a new batch size or precision recompiles)."""
        self.compute_dtype, self._run_compiled = dtype, compiled

    def _start_cache(self, interval: int) -> None:
        self._walk = walk_of(self.network)  # refuses a network it cannot cut, before the edit starts
        self.feature_cache = FeatureCache(interval)

    def _as_run(self, name: str, function: Callable) -> Callable:
        """``function`` as this edit runs it: itself, or its compiled form (kept as ``name``)."""
        if not self._run_compiled:
            return function
        key = (name, self.compile_backend)
        with self._compile_lock:
            if key not in self._compiled:
                persistent_compile_cache()
                # Static shapes: an edit calls with two or three batch shapes (unguided, guided), and a
                # graph per shape runs faster on CPU than one dynamic graph for all.
                compiled = torch.compile(function, backend=self.compile_backend, dynamic=False)
                self._compiled[key] = _Serialised(compiled, self._compile_lock)
            return self._compiled[key]

    def _forward(self) -> Callable:
        """The network as this edit runs it."""
        return self._as_run("network", self.network)

    def _cached(self, x, timesteps, t: float, context) -> torch.Tensor:
        """The network's output through the edit's feature cache."""
        whole = self._as_run("whole", self._walk.whole)
        shallow = self._as_run("shallow", self._walk.shallow)
        return self.feature_cache(whole, shallow, x, timesteps, float(t), context)

    def _autocast(self, device: torch.device):
        if self.compute_dtype in (None, torch.float32):
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.compute_dtype)

    @property
    def text_conditioned(self) -> bool:
        return self.text_encoder is not None

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def weights_hash(self) -> str:
        if self._hash is None:
            self._hash = state_hash(self.network)
        return self._hash

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor | None:
        return None if self.text_encoder is None else self.text_encoder(list(prompts))


COMPILE_CACHE_ENVIRON = "TORCHINDUCTOR_CACHE_DIR"  # torch's own variable: where Inductor keeps its caches


def persistent_compile_cache() -> Path:
    """Where torch.compile keeps what it compiled, so that the next process on this machine loads it
    instead of compiling again: Inductor's FX graph and AOTAutograd caches (on by default in torch) move
    from /tmp into the user's cache folder, one folder per torch version and CPU. Inside it, Inductor
    keys each entry on the traced graph, its input shapes and dtypes, its settings and the compiler, so
    a new network or shape compiles afresh; weights are inputs of the graph, so new weights reuse it.
    A folder the user set in $TORCHINDUCTOR_CACHE_DIR is kept."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get(COMPILE_CACHE_ENVIRON)  # torch writes its /tmp default here when it first looks
    if chosen and os.path.abspath(chosen) != os.path.abspath(default_cache_dir()):
        return Path(chosen)
    machine = hashlib.sha256(f"{platform.machine()} {_cpu_flags()}".encode()).hexdigest()[:12]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = base / "napari-medit" / "torch-compile" / f"torch-{torch.__version__}-{machine}"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[COMPILE_CACHE_ENVIRON] = str(folder)  # read by Inductor when it first compiles
    return folder


def _cpu_flags() -> str:
    """The CPU's name and instruction sets (Linux); the platform's processor string elsewhere."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = ("model name", "flags")
    return " ".join(dict(line.split(":", 1) for line in info if line.startswith(wanted)).values())


class _Serialised:
    """A compiled network called by one thread at a time: dynamo recompiles in place when a call misses
    its guards (a new batch size, precision), and torch.compile is not thread-safe while it does."""

    def __init__(self, compiled: Callable, lock: threading.Lock):
        self.compiled, self.lock = compiled, lock

    def __call__(self, *args, **kwargs):
        with self.lock:
            return self.compiled(*args, **kwargs)


class DiffusersDenoiser(NetworkDenoiser):
    """diffusers ``UNet2DModel`` (pixel space, optional mask channels) or
    ``UNet2DConditionModel`` (cross-attention text), optionally inside a VAE."""

    def __init__(
        self,
        unet,
        scheduler,
        *,
        name: str = "diffusers-unet",
        condition_names: Sequence[str] = (),
        text_encoder: TextEncoder | None = None,
        vae=None,
        value_range: tuple[float, float] = (-1.0, 1.0),
        preprocessing: Preprocessing = Preprocessing(),
        image_conditioned: bool = False,
    ):
        super().__init__()
        self.unet, self.vae, self.text_encoder = unet.eval(), vae, text_encoder
        self.preprocessing = preprocessing
        self.schedule = NoiseSchedule.from_scheduler(scheduler)
        self.name, self.value_range = name, value_range
        self.condition_names = tuple(condition_names)
        self.image_conditioned = image_conditioned
        in_channels = unet.config.in_channels - len(self.condition_names)
        if image_conditioned:  # x_t and the prior image have the same channels
            in_channels //= 2
        self.latent_channels = in_channels
        if vae is not None:
            self.vae = vae.eval()
            self.latent_factor = 2 ** (len(vae.config.block_out_channels) - 1)
            self.resolution = unet.config.sample_size * self.latent_factor
        else:
            self.image_channels = in_channels
            self.resolution = unet.config.sample_size
        if isinstance(self.resolution, (tuple, list)):
            self.resolution = int(self.resolution[0])
        self.network = self.unet

    def encode(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if self.vae is None:
            return images
        rgb = images.expand(-1, self.vae.config.in_channels, -1, -1)
        # By default the posterior mean, not a sample: inversion must see the same latent every time.
        posterior = self.vae.encode(rgb.to(self.vae.dtype)).latent_dist
        latents = (
            posterior.mean if noise is None else posterior.mean + posterior.std * noise.to(posterior.std)
        )
        return latents.to(images.dtype) * self.vae.config.scaling_factor

    def encode_prior(self, images: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return images
        rgb = images.expand(-1, self.vae.config.in_channels, -1, -1)
        return self.vae.encode(rgb.to(self.vae.dtype)).latent_dist.mode().to(images.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return latents
        rgb = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.vae.dtype)).sample
        return rgb.mean(dim=1, keepdim=True).float()

    def model_output(self, x_t, t, text, conditions):
        x = x_t if conditions is None else torch.cat([x_t, conditions.to(x_t.dtype)], dim=1)
        # Karras-style schedulers (Euler) may ask for a timestep between two integers.
        step_type = torch.long if float(t).is_integer() else torch.float32
        timestep = torch.full((x.shape[0],), t, device=x.device, dtype=step_type)
        dtype, x = self.unet.dtype, self._laid_out(x)
        with self._autocast(x.device):
            if self.feature_cache is not None:
                context = None if text is None else text.to(dtype)
                return self._cached(x.to(dtype), timestep, t, context).float()
            unet = self._forward()
            if text is None:
                return unet(x.to(dtype), timestep).sample.float()
            return unet(x.to(dtype), timestep, encoder_hidden_states=text.to(dtype)).sample.float()


class MonaiDenoiser(NetworkDenoiser):
    """MONAI ``DiffusionModelUNet`` with mask channels concatenated (MedEdit's model)."""

    def __init__(
        self,
        model,
        scheduler,
        *,
        resolution: int,
        name: str = "monai-unet",
        condition_names: Sequence[str] = (),
        value_range: tuple[float, float] = (0.0, 1.0),
        text_encoder: TextEncoder | None = None,
        preprocessing: Preprocessing = Preprocessing(),
    ):
        super().__init__()
        self.model, self.text_encoder = model.eval(), text_encoder
        self.preprocessing = preprocessing
        self.schedule = NoiseSchedule.from_scheduler(scheduler)
        self.name, self.resolution, self.value_range = name, resolution, value_range
        self.condition_names = tuple(condition_names)
        self.image_channels = self.latent_channels = model.out_channels
        self.network = self.model

    def model_output(self, x_t, t, text, conditions):
        x = x_t if conditions is None else torch.cat([x_t, conditions.to(x_t.dtype)], dim=1)
        timesteps = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        dtype, x = next(self.model.parameters()).dtype, self._laid_out(x)
        context = None if text is None else text.to(dtype)
        with self._autocast(x.device):
            if self.feature_cache is not None:
                return self._cached(x.to(dtype), timesteps, t, context).float()
            return self._forward()(x.to(dtype), timesteps=timesteps, context=context).float()
