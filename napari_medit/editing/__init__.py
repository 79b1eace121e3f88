"""The editing engine: RadEdit, MedEdit, PIE and baselines on one Denoiser protocol.

Nothing here imports Qt or napari; torch is imported when this package is.
"""

from .control import EditCancelled, NoiseSource, Progress
from .ddpm import NoiseSchedule
from .denoiser import Denoiser, DiffusersDenoiser, GaussianDenoiser, MonaiDenoiser
from .methods import METHODS
from .run import PLANES, EditError, EditProgress, EditResult, edit, plane_axis

__all__ = [
    "METHODS", "Denoiser", "DiffusersDenoiser", "EditCancelled", "EditError", "EditProgress", "EditResult",
    "GaussianDenoiser", "MonaiDenoiser", "NoiseSchedule", "NoiseSource", "PLANES", "Progress", "edit", "plane_axis",
]
