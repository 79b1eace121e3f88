"""The method catalogue: what every editing method takes, stated once, without torch or Qt.

For each method: its parameters (defaults, where each default comes from, defaults that
follow another parameter), the masks it requires or accepts, whether it takes text, the
models it can drive, its reference, and where its runner lives (imported only when an edit
runs). The run options every method shares (seed, slice axis, slices, batch size, slice
noise) are stated here too.

The CLI's options, the batch manifest's columns, the Edit widget's forms and mask pickers,
the Masks widget's roles and the README's option table are all generated from this module,
so a parameter added here is offered everywhere at once.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .instructions import pseudo_mask_region, read_instruction, region_template
from .masks import native_inpainting_mask, outside_brain_problem
from .results import EditError

# ---------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Follows:
    """A default that follows another parameter: ``rule(value of other)``, described by ``says``."""

    other: str
    rule: Callable[[Any], Any]
    says: str


def parameter(
    default: Any,
    source: str,
    *,
    follows: Follows | None = None,
    automatic: str | None = None,
    minimum: float | None = None,
) -> Any:
    """A method parameter and where its default comes from (shown as help text and tooltips).

    ``follows``: the default (None) is computed from another parameter when none is given.
    ``automatic``: what a None default means when it is decided at run time (e.g. from the model).
    ``minimum``: the least value a form offers (the checks that refuse less live with the options).
    """
    metadata = {"source": source, "follows": follows, "automatic": automatic, "minimum": minimum}
    return field(default=default, metadata=metadata)


def fields(params: type) -> list[dataclasses.Field]:
    return list(dataclasses.fields(params))


def value_type(params: type, name: str) -> type:
    """The type a parameter's values have, with ``| None`` taken off (None means: its default rule)."""
    hint = typing.get_type_hints(params)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def parse_value(params: type, name: str, text: str) -> Any:
    """A parameter's value from text (a CLI argument, a manifest cell), or ValueError naming it."""
    kind = value_type(params, name)
    text = str(text).strip()
    if issubclass(kind, enum.Enum):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(
                f"{name} must be one of {', '.join(m.value for m in kind)}, got {text!r}"
            ) from None
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name} must be true or false, got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{name} must be {kind.__name__}, got {text!r}") from None


def default_text(params: type, item: dataclasses.Field) -> str:
    """The default as a person reads it: a value, or the rule that gives it."""
    if item.metadata.get("follows"):
        return item.metadata["follows"].says
    if item.default is None:
        return item.metadata.get("automatic") or "none"
    value = item.default.value if isinstance(item.default, enum.Enum) else item.default
    return repr(value) if isinstance(value, str) else str(value)


def resolve(params):
    """``params`` with every following default filled in from the parameter it follows."""
    filled = {
        item.name: item.metadata["follows"].rule(getattr(params, item.metadata["follows"].other))
        for item in fields(type(params))
        if item.metadata.get("follows") and getattr(params, item.name) is None
    }
    return dataclasses.replace(params, **filled)


# ---------------------------------------------------------------- shared validation


def strength_steps(num_steps: int, strength: float) -> int:
    """How many of ``num_steps`` a run started at ``strength`` (in (0, 1]) denoises; validated."""
    if num_steps < 1:
        raise ValueError(f"steps must be at least 1, got {num_steps}")
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if int(num_steps * strength) < 1:
        raise ValueError(f"strength {strength} of {num_steps} steps leaves no step to run")
    return int(num_steps * strength)


COUNTS = ("steps", "iterations", "jump_length", "jump_n_sample")  # parameters that count: at least 1


class MethodParams:
    """Every method's parameters: the checks they share by name run first (``check``), then the
    method's own (``validate``)."""

    def check(self) -> None:
        """ValueError naming the first problem: a count below 1, a strength that leaves no step,
        a negative eta or instruction guidance, then whatever the method checks itself."""
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        for name in COUNTS:
            if name in values and values[name] < 1:
                raise ValueError(f"{name} must be at least 1, got {values[name]}")
        if values.get("strength") is not None and "steps" in values:
            strength_steps(values["steps"], values["strength"])
        if values.get("eta", 0) < 0:
            raise ValueError(f"eta must be at least 0, got {values['eta']}")
        if min(values.get("text_guidance", 0), values.get("image_guidance", 0)) < 0:
            raise ValueError("text_guidance and image_guidance must be at least 0")
        self.validate()

    def validate(self) -> None:
        """The method's own checks, beyond the shared ones."""


# ---------------------------------------------------------------- each method's parameters


class MaskGrid(str, enum.Enum):
    """How masks drawn on the image reach the model's (latent) grid."""

    binary = "binary"  # a cell is in the mask when at least half of it is (RadEdit's pipeline binarises)
    fractional = "fractional"  # each cell's covered fraction: soft mask borders


class RePaintStart(str, enum.Enum):
    """Where the RePaint loop starts."""

    noise = "noise"  # pure Gaussian noise (RePaint, Algorithm 1)
    noised_input = "noised_input"  # the input noised to the first timestep (MedEdit's code)


class PIELoop(str, enum.Enum):
    """How PIE's N iterations are run."""

    # run_pie.py: the model's own scheduler; each iteration ends in an 8-bit image, re-encoded
    reference = "reference"
    latent = "latent"  # napari-medit's: DDIM, the iterations chained in model space (no 8-bit round trip)


RADEDIT_SKIP_RATIO = 36 / 100  # the edit-friendly inversion reference code skips 36 of 100 steps


@dataclass(frozen=True)
class RadEditParams(MethodParams):
    prompt: str = parameter(
        "No acute cardiopulmonary process", "the edit's text: the 'normal' prompt (Sec. 5.2)"
    )
    inversion_prompt: str = parameter("", "the inversion's text: unconditional in the paper's experiments")
    steps: int = parameter(100, "DDPM steps: 100 in the edit-friendly inversion reference code")
    skip: int | None = parameter(
        None,
        "steps skipped before editing: 36 of 100 in the reference code",
        follows=Follows("steps", lambda steps: round(steps * RADEDIT_SKIP_RATIO), "36% of steps (36 of 100)"),
    )
    guidance: float = parameter(15.0, "classifier-free guidance: 'we use a value of 15' (Sec. 4.2)")
    inversion_guidance: float = parameter(
        3.5,
        "classifier-free guidance of the inversion when inversion_prompt is given: 3.5, the edit-friendly "
        "inversion reference code's cfg_src (1: none)",
    )
    mask_grid: MaskGrid = parameter(
        MaskGrid.binary,
        "edit/keep masks on the model's grid: binary as RadEdit's pipeline, or fractional coverage",
    )

    def validate(self) -> None:
        if not 0 <= self.skip < self.steps:
            raise ValueError(f"skip must be in [0, steps) = [0, {self.steps}), got {self.skip}")


REFERENCE_RESOLUTION = 128  # MedEdit's slices are 128 x 128 ...
REFERENCE_DILATION = 25  # ... and its dilation kernel 25 x 25 pixels


@dataclass(frozen=True)
class MedEditParams(MethodParams):
    steps: int = parameter(1000, "DDPM steps: the full 1000-step chain in MedEdit's published configuration")
    dilation: int | None = parameter(
        None, "dilation kernel in model-grid pixels", automatic="25 px at 128 px, scaled to the model"
    )
    jump_n_sample: int = parameter(
        1,
        "resampling: each step repeated r times, going one step back up between repeats, as MedEdit's code "
        "(resample_steps); 1 (off) as published",
    )

    def validate(self) -> None:
        if self.dilation is not None and self.dilation < 1:
            raise ValueError(f"dilation must be at least 1 pixel, got {self.dilation}")

    def kernel_size(self, resolution: int) -> int:
        """The dilation kernel at ``resolution``, odd so it stays centred."""
        size = self.dilation or round(REFERENCE_DILATION * resolution / REFERENCE_RESOLUTION)
        return max(1, size | 1)


@dataclass(frozen=True)
class PIEParams(MethodParams):
    prompt: str = parameter("Pleural effusion", "the finding to progress towards")
    iterations: int = parameter(10, "N, progression steps: PIE's default 10")
    strength: float = parameter(0.5, "gamma, noise level of a step: PIE's default 0.5 (25 of 50 DDIM steps)")
    steps: int = parameter(50, "DDIM steps of a full img2img pass: PIE's default 50")
    guidance: float = parameter(7.5, "classifier-free guidance: PIE's 7.5 (its README example: 27.5)")
    eta: float = parameter(0.0, "DDIM stochasticity: 0 (deterministic DDIM) in PIE (latent loop)")
    loop: PIELoop | None = parameter(
        None,
        "reference: as run_pie.py (the model's scheduler, 8-bit image between iterations, VAE sample); "
        "latent: DDIM with the iterations chained in model space",
        automatic="reference for latent (VAE) models, latent for pixel-space models",
    )


@dataclass(frozen=True)
class SDEditParams(MethodParams):
    strength: float = parameter(
        0.5,
        "encoding ratio t0: SDEdit's t0 in [0.3, 0.6] (Sec. 4), midway; "
        "MedEdit's baseline: 0.1 (preset mededit-paper)",
    )
    steps: int = parameter(1000, "DDPM steps: the full 1000-step chain; fewer gives a strided DDPM")


@dataclass(frozen=True)
class RePaintParams(MethodParams):
    steps: int = parameter(250, "T, DDPM steps: 250 in the RePaint paper")
    jump_length: int = parameter(10, "j, resampling jump length: 10 in the RePaint paper")
    jump_n_sample: int = parameter(10, "r, resampling repeats: 10 in the RePaint paper (2,410 model calls)")
    start: RePaintStart = parameter(
        RePaintStart.noise, "pure noise in RePaint; MedEdit's naive baseline starts from the noised input"
    )


@dataclass(frozen=True)
class DiffEditParams(MethodParams):
    prompt: str = parameter("No acute cardiopulmonary process", "the edit's text")
    inversion_prompt: str = parameter("", "the inversion's text (DiffEdit's query; empty: unconditional)")
    steps: int = parameter(50, "DDIM steps: 50 in DiffEdit and diffusers' pipeline")
    strength: float = parameter(0.8, "encoding ratio: diffusers' StableDiffusionDiffEditPipeline default 0.8")
    guidance: float = parameter(7.5, "classifier-free guidance: 7.5, Stable Diffusion's default")
    inversion_guidance: float = parameter(
        1.0,
        "classifier-free guidance of the DDIM inversion: 1, none, as RadEdit's Algorithm 2 writes DiffEdit "
        "(diffusers' invert() defaults to 7.5)",
    )
    mask_grid: MaskGrid = parameter(
        MaskGrid.binary,
        "edit mask on the model's grid: binary as DiffEdit's own thresholded masks, or fractional coverage",
    )


INSTRUCT_STEPS, INSTRUCT_TEXT_GUIDANCE, INSTRUCT_IMAGE_GUIDANCE = 100, 7.5, 1.5  # InstructPix2Pix's pipeline


@dataclass(frozen=True)
class InstructParams(MethodParams):
    prompt: str = parameter("remove the right pleural effusion", "the instruction: what should change")
    steps: int = parameter(
        INSTRUCT_STEPS,
        "sampling steps of the model's scheduler: 100, InstructPix2Pix's "
        "pipeline default (and BiomedJourney's)",
    )
    text_guidance: float = parameter(
        INSTRUCT_TEXT_GUIDANCE, "s_T, guidance towards the instruction: InstructPix2Pix's 7.5"
    )
    image_guidance: float = parameter(
        INSTRUCT_IMAGE_GUIDANCE, "s_I, guidance towards the prior image: InstructPix2Pix's 1.5"
    )
    strength: float | None = parameter(
        None,
        "start from the prior noised to this fraction of the schedule (SDEdit-style; not in the papers)",
        automatic="pure noise, as the papers",
    )


RELEVANCE_TIMESTEP = 0.8  # InstructX2X computes its relevance map at t = 0.8 T


@dataclass(frozen=True)
class InstructX2XParams(MethodParams):
    prompt: str = parameter("remove the right pleural effusion", "the instruction: what should change")
    steps: int = parameter(INSTRUCT_STEPS, "DDIM steps: 100 in InstructX2X's rse_x2x.py")
    text_guidance: float = parameter(INSTRUCT_TEXT_GUIDANCE, "s_T: 7.5 in InstructX2X's rse_x2x.py")
    image_guidance: float = parameter(INSTRUCT_IMAGE_GUIDANCE, "s_I: 1.5 in InstructX2X's rse_x2x.py")
    threshold: float = parameter(
        0.1,
        "tau, where the guidance map (relevance x region) is cut: 0.1 as InstructX2X's example run "
        "(its function default 0.5 leaves a tighter map)",
    )
    relevance_timestep: float = parameter(
        RELEVANCE_TIMESTEP,
        "the noise level the relevance map is read at, as a fraction of T: InstructX2X's 0.8",
    )
    pseudo_masks: str | None = parameter(
        None,
        "a folder of InstructX2X's released pseudo masks (its inference/masks): without a roi_mask, the "
        "region is the union of those the instruction names, as its reference builds it",
        automatic="napari-medit's per-finding templates",
    )

    def validate(self) -> None:
        if not 0 <= self.threshold < 1:
            raise ValueError(f"threshold must be in [0, 1), got {self.threshold}")
        if not 0 < self.relevance_timestep <= 1:
            raise ValueError(f"relevance_timestep must be in (0, 1], got {self.relevance_timestep}")


# ---------------------------------------------------------------- run options (every method)


class Precision(str, enum.Enum):
    """The arithmetic of the denoising network's forward passes (VAEs and text encoders stay float32)."""

    auto = "auto"  # float16 on CUDA; bfloat16 on a CPU that computes it natively; float32 elsewhere
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class SliceNoise(str, enum.Enum):
    """How a volume's slices draw their noise (napari_medit.editing.slice_noise)."""

    independent = "independent"  # a seed per slice: neighbours are unrelated
    shared = "shared"  # one noise for every slice: the same texture everywhere
    correlated = "correlated"  # ISCS: neighbours nearly the same, slices 2 L apart independent


DEFAULT_CORRELATION_MM = 3.0  # chosen by benchmarks/slice_consistency.py (see the README)


@dataclass(frozen=True)
class RunOptions:
    seed: int = parameter(0, "the same seed, model and settings give a bit-identical result")
    axis: str = parameter(
        "axial", "slice along axial, coronal, sagittal (from the affine) or array axis 0, 1, 2"
    )
    slices: str | None = parameter(
        None, "A:B, the slices along the axis to edit", automatic="the slices the method's mask touches"
    )
    batch_size: int | None = parameter(
        None, "slices per model call", automatic="4 on CPU, by free memory on GPU"
    )
    slice_noise: SliceNoise = parameter(
        SliceNoise.correlated,
        "noise per slice: correlated between neighbours (ISCS; chosen by measurement: as "
        "smooth across slices as the anatomy), independent (a seed each) or shared by all slices",
    )
    noise_correlation_mm: float = parameter(
        DEFAULT_CORRELATION_MM,
        "correlated slice noise: its correlation length L in mm (neighbours d mm apart "
        "correlate as cos(pi d / 2L); 2L apart, independent)",
    )
    through_plane_smoothing: float = parameter(
        0.0,
        "through-plane regularisation (DiffusionMBIR-style): 0 off, up to 1, a smoothing step of the "
        "predicted clean image across edited slices at every step",
    )
    precision: Precision = parameter(
        Precision.auto,
        "the denoising network's arithmetic: auto is float16 on CUDA, bfloat16 on a CPU with "
        "native bfloat16 (AVX512-BF16 or AMX), else float32; VAEs and text encoders stay float32",
    )
    samples: int = parameter(
        1,
        "samples of the edit, each with its own seed (the first: the run's seed), and a per-voxel "
        "standard deviation map over them: how much of the edit is the model's and how much one draw's",
        minimum=1,
    )
    cache_interval: int = parameter(
        1,
        "reuse the network's deep features for N-1 of every N steps of a run (DeepCache; 1: off, exact): "
        "a reused step computes only the shallow branch, an eighth of a pass; refreshed at every jump, "
        "inversion and new batch. 3 measured on a 2-core CPU: 2.2-2.4x faster, 35-51 dB against exact "
        "inside the editable region, every voxel outside it unchanged (docs/speed.md)",
        minimum=1,
    )
    compile_network: bool = parameter(
        False,
        "compile the denoising network with torch.compile, one graph per batch shape: 1.4x per pass at one "
        "shape on CPU, 1.0-1.2x per edit (docs/speed.md); the first compile on a machine takes 1-2 "
        "minutes and is kept in the user's cache folder, so later processes load it in seconds",
    )

    def validate(self) -> None:
        parse_slices(self.slices)  # refuses text that is not A:B
        check_slice_options(self.noise_correlation_mm, self.through_plane_smoothing)
        check_count("samples", self.samples)
        check_count("cache_interval", self.cache_interval)

    def edit_arguments(self) -> dict[str, Any]:
        """The keyword arguments ``napari_medit.editing.edit`` takes for these options."""
        values = {item.name: getattr(self, item.name) for item in fields(RunOptions)}
        return {**values, "axis": parse_axis(self.axis), "slices": parse_slices(self.slices)}


SCHEDULER_ENVIRON = "NAPARI_MEDIT_SCHEDULER"  # the scheduler option's value when none is given
LOCAL_WORKER = "local"  # the scheduler option's value for a worker process on this machine (127.0.0.1)


@dataclass(frozen=True)
class ComputeOptions:
    """Where an edit's model runs and how it is loaded: once per command or batch, not per edit."""

    scheduler: str | None = parameter(
        None,
        f"where the edit runs: a dask scheduler's address (tcp://host:8786, tls://..., localhost:PORT "
        f"through an SSH tunnel), or {LOCAL_WORKER!r} for a worker process on this machine",
        automatic=f"${SCHEDULER_ENVIRON}, else this process",
    )
    device: str | None = parameter(
        None,
        "cpu, cuda, cuda:1, mps, on the machine that computes",
        automatic="CUDA if available, then MPS, then CPU",
    )
    download: bool = parameter(False, "let a hub model download (default: offline)")
    trust_remote_code: bool = parameter(
        False, "let a model's text encoder run code from its repository (BioViL-T needs it)"
    )

    def resolved_scheduler(self) -> str | None:
        """The scheduler given, else $NAPARI_MEDIT_SCHEDULER; None: compute in this process."""
        import os

        return self.scheduler or os.environ.get(SCHEDULER_ENVIRON) or None

    def placed(self) -> ComputeOptions:
        """These options with the place decided (``resolved_scheduler``): what a front end hands on, so
        that nothing below it, a worker least of all, reads the environment again."""
        return dataclasses.replace(self, scheduler=self.resolved_scheduler())

    def load_arguments(self) -> dict[str, Any]:
        """The keyword arguments ``napari_medit.backends.load_model`` takes for these options."""
        return {"device": self.device, "download": self.download, "trust_remote_code": self.trust_remote_code}


def check_slice_options(noise_correlation_mm: float, through_plane_smoothing: float) -> None:
    """ValueError naming a slice option out of range."""
    if not noise_correlation_mm > 0:
        raise ValueError(f"noise_correlation_mm must be a positive length in mm, got {noise_correlation_mm}")
    if not 0 <= through_plane_smoothing <= 1:
        raise ValueError(
            f"through_plane_smoothing must be between 0 (off) and 1, got {through_plane_smoothing}"
        )


def check_count(name: str, value: int) -> None:
    """ValueError unless the run option ``name`` is a whole number of at least 1."""
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, got {value}")


def sample_seeds(seed: int, samples: int) -> list[int]:
    """The seeds of ``samples`` samples of one edit: the run's own first (sample 1 is the edit without
    samples), then seeds drawn from it by numpy's SeedSequence (independent streams, not seed + 1, which
    another run's sample 1 would share)."""
    spawned = np.random.SeedSequence(seed).generate_state(max(samples - 1, 0), np.uint32)
    return [int(seed), *(int(s) for s in spawned)]


def parse_axis(text: str | int) -> int | str:
    text = str(text).strip()
    return int(text) if text.lstrip("-").isdigit() else text


def parse_slices(text: str | None) -> tuple[int, int] | None:
    if text is None or not str(text).strip():
        return None
    try:
        start, stop = (int(v) for v in str(text).split(":"))
    except ValueError:
        raise ValueError(f"slices must look like 10:20, got {text!r}") from None
    return start, stop


# ---------------------------------------------------------------- masks


@dataclass(frozen=True)
class MaskRole:
    says: str  # what the mask marks
    hints: tuple[str, ...]  # words in a layer or file name that say it plays this role
    color: str  # label 1's colour wherever a mask of this role is shown (0 stays transparent)


# Every widget, layer and file name derives from these: the Masks widget's layers, the colour a mask
# file or layer named like a role opens in, the Edit widget's pre-selection, the CLI's mask options.
MASK_ROLES: dict[str, MaskRole] = {
    # magenta: where the edit happens; green: what must not change
    "edit_mask": MaskRole("the region to change", ("edit",), "#ff4fd8"),
    "keep_mask": MaskRole("the region kept exactly (RadEdit)", ("keep",), "#3ddc84"),
    "pathology_mask": MaskRole("the lesion or finding to create", ("pathology", "lesion"), "#ff5a36"),
    "brain_mask": MaskRole("the brain (MedEdit's second condition)", ("brain",), "#3d8bff"),
    "roi_mask": MaskRole(
        "the region of interest PIE progresses in, or InstructX2X may edit", ("roi",), "#ffb000"
    ),
    "lung_mask": MaskRole("the lungs, which InstructX2X cuts its finding templates to", ("lung",), "#00c8ff"),
}

# Maps a method computes while it runs (on the image's grid), returned beside the result.
MAP_ROLES: dict[str, str] = {
    "guidance_map": "InstructX2X's guidance map: relevance x region, in [0, 1]",
    "guidance_mask": "the guidance map thresholded at tau: the only pixels the edit changes",
}


def says_role(name: str, role: str) -> bool:
    """Whether a layer or file name says it is a ``role`` mask ('t1 lesion_mask' for pathology_mask)."""
    return any(hint in name.lower() for hint in MASK_ROLES[role].hints)


def role_of(name: str) -> str | None:
    """The first mask role a layer or file name says it plays, if any."""
    return next((role for role in MASK_ROLES if says_role(name, role)), None)


def name_like(role: str, names) -> str | None:
    """The first of ``names`` that says it is a ``role`` mask."""
    return next((n for n in names if says_role(n, role)), None)


# ---------------------------------------------------------------- methods

Masks = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Preset:
    """Named parameter values that reproduce a paper's configuration (other than the method's own)."""

    says: str
    values: Mapping[str, Any]


MEDEDIT_PAPER = "mededit-paper"  # the baselines as MedEdit's paper ran them


@dataclass(frozen=True)
class Method:
    """One editing method, as every front end sees it."""

    name: str
    title: str
    reference: str
    params: type
    required_masks: tuple[str, ...]
    optional_masks: tuple[str, ...]
    takes_text: bool
    runner: str  # 'module:function', imported when an edit runs (the method's file)
    slice_region: str | None  # the mask whose slices are edited by default (None: every slice)
    editable: Callable[[Masks], np.ndarray | None]  # the region it may change; the rest is copied back
    region: Callable[[Masks], np.ndarray | None]  # the region it is asked to edit (for the metrics)
    model_conditions: tuple[str, ...] | None = None  # the exact mask conditions its model takes (None: any)
    # derived masks, from (the stacked masks, the parameters, the model's resolution, the stack's shape)
    prepare_masks: Callable[[Masks, Any, int, tuple[int, ...]], dict[str, np.ndarray]] | None = None
    check_masks: Callable[[Masks], str | None] | None = None  # a request it refuses, in one sentence
    presets: Mapping[str, Preset] = field(default_factory=dict)  # other papers' settings, by name
    edits_from_prior: bool = False  # an instruction method: its model reads the prior image beside x_t
    produces: tuple[str, ...] = ()  # maps its runner returns (MAP_ROLES), available to editable/region

    @property
    def masks(self) -> tuple[str, ...]:
        return self.required_masks + self.optional_masks

    def make_params(self, values: Mapping[str, Any], preset: str | None = None):
        """Its parameters from ``values`` (None: the preset's value, else the default), followers
        resolved, validated. ValueError names the first problem."""
        known = [item.name for item in fields(self.params)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(
                f"{self.name} has no parameter {unknown[0]!r}; its parameters: {', '.join(known)}"
            )
        given = {**self.preset(preset).values, **{k: v for k, v in values.items() if v is not None}}
        for name, value in given.items():  # API callers may spell an option's value as text ('reference')
            if issubclass(value_type(self.params, name), enum.Enum) and not isinstance(value, enum.Enum):
                given[name] = parse_value(self.params, name, value)
        params = resolve(self.params(**given))
        params.check()
        return params

    def preset(self, name: str | None) -> Preset:
        """A preset by name (None: the method's own paper defaults, no values changed)."""
        if not name:
            return Preset("the method's own paper defaults", {})
        if name not in self.presets:
            offered = ", ".join(self.presets) or "none"
            raise ValueError(f"{self.name} has no preset {name!r}; its presets: {offered}")
        return self.presets[name]

    def unused_mask_problem(self, roles) -> str | None:
        """A mask given that this method does not take, in one sentence, or None."""
        unused = sorted(set(roles) - set(self.masks))
        if unused:
            return f"{self.name} does not use a {unused[0]}; it takes: {', '.join(self.masks) or 'no masks'}"
        return None

    def model_problem(
        self, text_conditioned: bool, condition_names, image_conditioned: bool = False
    ) -> str | None:
        """Why a model with this conditioning cannot run the method, or None."""
        if self.edits_from_prior and not image_conditioned:
            return (
                f"{self.name} needs an instruction model, which reads the prior image beside the noise "
                "(an InstructPix2Pix-format model such as demo-cxr-instruct)"
            )
        if image_conditioned and not self.edits_from_prior:
            instructed = ", ".join(m.name for m in METHODS.values() if m.edits_from_prior)
            return f"the model is an instruction model (it reads the prior image): use {instructed}"
        if self.takes_text and not text_conditioned:
            without_text = ", ".join(m.name for m in METHODS.values() if not m.takes_text)
            return (
                f"{self.name} edits with a text prompt, and the model has no text conditioning; pick a "
                f"text-conditioned model, or use {without_text} with this one"
            )
        if self.model_conditions is not None and set(condition_names) != set(self.model_conditions):
            return (
                f"{self.name} needs a model conditioned on {' and '.join(self.model_conditions)}; "
                f"this one takes {', '.join(condition_names) or 'no masks'}"
            )
        if not set(condition_names) <= set(self.masks):
            return (
                f"the model is conditioned on {', '.join(condition_names)}, which {self.name} does not take"
            )
        return None

    def load_runner(self) -> Callable:
        """The method's ``Runner`` (``napari_medit.editing.control``): one ``EditInputs`` in, ``Edited``
        out. Imported here, when an edit runs, so the catalogue stays torch-free."""
        module, function = self.runner.split(":")
        return getattr(importlib.import_module(module), function)


def _mededit_masks(masks: Masks, params: MedEditParams, resolution: int, shape) -> dict[str, np.ndarray]:
    """MedEdit regenerates dilate(pathology) AND brain, the kernel sized on the model's grid."""
    return {
        "inpaint_mask": native_inpainting_mask(
            masks["pathology_mask"], masks["brain_mask"], params.kernel_size(resolution), resolution
        )
    }


def _instruction_region(
    masks: Masks, params: InstructX2XParams, resolution: int, shape
) -> dict[str, np.ndarray]:
    """InstructX2X's anatomical region: the user's roi_mask; else, given the folder, its released pseudo
    masks for the findings the instruction names; else napari-medit's templates of those findings (the
    whole image when it names none), cut to the lungs when a lung_mask is given."""
    if "roi_mask" in masks:
        return {}
    if params.pseudo_masks:
        try:
            region = pseudo_mask_region(params.pseudo_masks, params.prompt, tuple(shape[1:]))
        except ValueError as exc:
            raise EditError(str(exc)) from None
        return {"roi_mask": np.broadcast_to(region, shape).copy()}
    found = read_instruction(params.prompt)
    lungs = masks.get("lung_mask")
    regions = [
        region_template(found, tuple(shape[1:]), None if lungs is None else lungs[i]) for i in range(shape[0])
    ]
    return {"roi_mask": np.stack(regions)}


def _guided_region(masks: Masks) -> np.ndarray | None:
    """InstructX2X edits where its thresholded guidance map lies, cut to the region at the image's
    own resolution (the map was thresholded on the model's coarser grid). None before it ran."""
    guidance = masks.get("guidance_mask")
    return None if guidance is None else guidance & masks["roi_mask"]


def _mededit_check(masks: Masks) -> str | None:
    if not (np.asarray(masks["pathology_mask"]) & np.asarray(masks["brain_mask"])).any():
        return outside_brain_problem(masks["pathology_mask"], masks["brain_mask"])
    return None


def _outside_keep(masks: Masks):
    keep = masks.get("keep_mask")
    return None if keep is None else ~keep


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "radedit",
            "RadEdit",
            "Bond-Taylor et al., RadEdit, ECCV 2024, Algorithm 3",
            RadEditParams,
            (),
            ("edit_mask", "keep_mask"),
            True,
            "napari_medit.editing.radedit:run",
            "edit_mask",
            editable=_outside_keep,
            region=lambda m: m.get("edit_mask"),
        ),
        Method(
            "mededit",
            "MedEdit",
            "Ben Alaya et al., MedEdit, 2024",
            MedEditParams,
            ("pathology_mask", "brain_mask"),
            (),
            False,
            "napari_medit.editing.mededit:run",
            "pathology_mask",
            editable=lambda m: m["inpaint_mask"],
            region=lambda m: m["inpaint_mask"],
            model_conditions=("pathology_mask", "brain_mask"),
            prepare_masks=_mededit_masks,
            check_masks=_mededit_check,
        ),
        Method(
            "pie",
            "PIE",
            "Liang et al., PIE, 2023",
            PIEParams,
            ("roi_mask",),
            (),
            True,
            "napari_medit.editing.pie:run",
            "roi_mask",
            editable=lambda m: m["roi_mask"],
            region=lambda m: m["roi_mask"],
        ),
        Method(
            "sdedit",
            "SDEdit",
            "Meng et al., SDEdit, ICLR 2022",
            SDEditParams,
            (),
            ("edit_mask", "pathology_mask", "brain_mask"),
            False,
            "napari_medit.editing.sdedit:run",
            "edit_mask",
            editable=lambda m: m.get("edit_mask"),
            region=lambda m: m.get("edit_mask"),
            presets={
                MEDEDIT_PAPER: Preset(
                    "MedEdit's SDEdit baseline: encoding ratio 0.1 of the 1000-step chain "
                    "(MedEdit, projects/baselines/configs/sdedit.yaml)",
                    {"strength": 0.1, "steps": 1000},
                )
            },
        ),
        Method(
            "repaint",
            "RePaint",
            "Lugmayr et al., RePaint, CVPR 2022",
            RePaintParams,
            ("pathology_mask",),
            ("brain_mask",),
            False,
            "napari_medit.editing.repaint:run",
            "pathology_mask",
            editable=lambda m: m["pathology_mask"],
            region=lambda m: m["pathology_mask"],
            presets={
                MEDEDIT_PAPER: Preset(
                    "MedEdit's naive RePaint baseline: MedEdit's own loop on the undilated mask, 1000 steps, "
                    "no "
                    "resampling, from the noised input (projects/baselines/configs/naive_repaint.yaml)",
                    {"steps": 1000, "jump_length": 1, "jump_n_sample": 1, "start": RePaintStart.noised_input},
                )
            },
        ),
        Method(
            "diffedit",
            "DiffEdit",
            "Couairon et al., DiffEdit, ICLR 2023 (given mask)",
            DiffEditParams,
            ("edit_mask",),
            (),
            True,
            "napari_medit.editing.diffedit:run",
            "edit_mask",
            editable=lambda m: m["edit_mask"],
            region=lambda m: m["edit_mask"],
        ),
        Method(
            "instruct",
            "Instruction edit",
            "Gu et al., BiomedJourney, 2023 (InstructPix2Pix, Brooks et al., CVPR 2023)",
            InstructParams,
            (),
            (),
            True,
            "napari_medit.editing.instruct:run",
            None,
            editable=lambda m: None,
            region=lambda m: None,
            edits_from_prior=True,
        ),
        Method(
            "instructx2x",
            "InstructX2X",
            "Region-Specific Editing, InstructX2X (hgminn/InstructX2X)",
            InstructX2XParams,
            (),
            ("roi_mask", "lung_mask"),
            True,
            "napari_medit.editing.instructx2x:run",
            "roi_mask",
            editable=_guided_region,
            region=_guided_region,
            prepare_masks=_instruction_region,
            edits_from_prior=True,
            produces=("guidance_map", "guidance_mask"),
        ),
    )
}


def method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def parameter_names() -> dict[str, type]:
    """Every method parameter name with its value type (one type per name across methods)."""
    names: dict[str, type] = {}
    for spec in METHODS.values():
        for item in fields(spec.params):
            kind = value_type(spec.params, item.name)
            if names.setdefault(item.name, kind) is not kind:
                raise TypeError(f"parameter {item.name!r} has two types: {names[item.name]} and {kind}")
    return names


def markdown_table() -> str:
    """The README's table of methods, masks and parameters with their defaults."""
    lines = [
        "| method | masks (required; optional) | text | parameters (default: source) |",
        "|---|---|---|---|",
    ]
    for spec in METHODS.values():
        masks = ", ".join(spec.required_masks) or "none"
        if spec.optional_masks:
            masks += "; " + ", ".join(spec.optional_masks)
        described = "<br>".join(
            f"`--{item.name.replace('_', '-')}` {default_text(spec.params, item)}: {item.metadata['source']}"
            for item in fields(spec.params)
        )
        presets = "".join(f"<br>`--preset {name}`: {preset.says}" for name, preset in spec.presets.items())
        lines.append(
            f"| `{spec.name}` ({spec.reference}) | {masks} | {'yes' if spec.takes_text else 'no'} | "
            f"{described}{presets} |"
        )
    lines += ["", "Every method also takes:", ""]
    lines += [
        f"- `--{item.name.replace('_', '-')}` (default {default_text(RunOptions, item)}): "
        f"{item.metadata['source']}"
        for item in fields(RunOptions)
    ]
    return "\n".join(lines)
