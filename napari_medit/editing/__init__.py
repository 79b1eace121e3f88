"""The editing engine: RadEdit, MedEdit, PIE and baselines on one Denoiser protocol.

Nothing here imports Qt or napari; torch is imported when this package is.
"""

from ..catalogue import METHODS
from ..io.image import PLANES, plane_axis
from .control import EditCancelled, NoiseSource, Progress
from .ddpm import NoiseSchedule
from .denoiser import Denoiser, DiffusersDenoiser, MonaiDenoiser
from .run import EditError, EditPlan, EditProgress, EditResult, assemble, edit, plan_edit, run_plan

__all__ = [
    "METHODS",
    "PLANES",
    "Denoiser",
    "DiffusersDenoiser",
    "EditCancelled",
    "EditError",
    "EditPlan",
    "EditProgress",
    "EditResult",
    "MonaiDenoiser",
    "NoiseSchedule",
    "NoiseSource",
    "Progress",
    "assemble",
    "edit",
    "plan_edit",
    "plane_axis",
    "run_plan",
]
