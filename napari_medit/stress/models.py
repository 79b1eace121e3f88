"""The model under test, and the small contract it keeps.

``MODEL`` is a TorchScript file (``torch.jit.save``) or ``module:function``, a Python
function that returns a torch module (your own code, imported as any Python module is).

- In: a float32 batch (N, 1, S, S) in [0, 1]: each image's 0.5-99.5 % intensity window,
  padded to a square and resampled to S x S, as napari-medit feeds its own models. S is
  the module's ``input_size`` attribute when it has one, else ``input_size`` here (64).
- Out, a classifier: (N,) or (N, 1) probabilities of the finding, in [0, 1].
- Out, a segmenter: (N, 1, S, S) or (N, S, S) lung probabilities in [0, 1], thresholded
  at 0.5 after resampling back to the image's grid.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from .scenarios import Task

DEFAULT_INPUT_SIZE = 64


class ModelUnderTestError(ValueError):
    """A model under test that is missing, fails to load or breaks the contract."""


def import_callable(spec: str, what: str, returning: str):
    """The function ``module:function`` names; ModelUnderTestError names the fix when it cannot be
    imported."""
    module_name, _, function = spec.rpartition(":")
    try:
        return getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ModelUnderTestError(
            f"{what} {spec!r}: cannot import it ({exc}); give module:function of a "
            f"function returning {returning}"
        ) from None


class ModelUnderTest:
    def __init__(self, module, task: Task, input_size: int, name: str):
        self.module, self.task, self.input_size, self.name = module, task, input_size, name

    @classmethod
    def load(cls, spec: str, task: Task, input_size: int | None = None) -> ModelUnderTest:
        """Load ``spec`` and check the contract on a probe batch; ModelUnderTestError names the fix."""
        import torch

        path = Path(spec).expanduser()
        if ":" in spec and not path.exists():
            module = import_callable(spec, "model under test", "a torch module")()
        elif path.is_file():
            try:
                module = torch.jit.load(str(path), map_location="cpu")
            except RuntimeError as exc:
                raise ModelUnderTestError(
                    f"model under test {path}: not a TorchScript file "
                    f"({str(exc).splitlines()[0]}); save it with torch.jit.save"
                ) from None
        else:
            raise ModelUnderTestError(f"model under test {spec!r}: no such file, and not module:function")
        if not isinstance(module, torch.nn.Module):
            raise ModelUnderTestError(
                f"model under test {spec!r}: got a {type(module).__name__}, not a torch module"
            )
        size = int(getattr(module, "input_size", input_size or DEFAULT_INPUT_SIZE))
        model = cls(module.eval(), task, size, spec)
        model.check()
        return model

    def check(self) -> None:
        """Run two blank images through and check the output's shape and range."""
        probe = np.zeros((2, self.input_size, self.input_size), np.float32)
        try:
            out = self._forward(probe)
        except Exception as exc:  # noqa: BLE001 - the user's network failing on the contract's input
            raise ModelUnderTestError(
                f"model under test {self.name}: fails on a (2, 1, {self.input_size}, "
                f"{self.input_size}) batch ({str(exc).splitlines()[0]})"
            ) from None
        expected = (
            "(N,) or (N, 1)"
            if self.task is Task.classifier
            else f"(N, 1, {self.input_size}, {self.input_size})"
        )
        shape_ok = (
            out.shape in ((2,), (2, 1))
            if self.task is Task.classifier
            else out.shape
            in ((2, 1, self.input_size, self.input_size), (2, self.input_size, self.input_size))
        )
        if not shape_ok:
            raise ModelUnderTestError(
                f"model under test {self.name}: a {self.task.value} must return {expected} "
                f"probabilities; it returned shape {tuple(out.shape)}"
            )
        if not (np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1):
            raise ModelUnderTestError(
                f"model under test {self.name}: outputs must be probabilities in [0, 1] "
                f"(apply a sigmoid); got values in [{out.min():.3g}, {out.max():.3g}]"
            )

    def _forward(self, units: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.module(torch.from_numpy(units[:, None])).detach().float().numpy()

    def predict(self, images: list[np.ndarray]) -> list:
        """Per image: a probability (classifier) or a bool lung mask on the image's grid (segmenter)."""
        from ..preprocessing import Grid, IntensityWindow

        out = []
        for image in images:
            image = np.asarray(image, np.float64)
            grid = Grid(image.shape[0], image.shape[1], self.input_size)
            unit = grid.to_model(IntensityWindow.of(image).to_unit(image)[None]).numpy()[:, 0]
            result = self._forward(unit.astype(np.float32))
            if self.task is Task.classifier:
                out.append(float(result.reshape(-1)[0]))
            else:
                import torch

                probabilities = torch.from_numpy(result.reshape(1, 1, self.input_size, self.input_size))
                out.append(np.nan_to_num(grid.from_model(probabilities)[0]) >= 0.5)
        return out
