"""The method catalogue: one statement of every method, offered alike by the CLI, a manifest and the
README."""

import enum
import json
import subprocess
import sys
from pathlib import Path

import pytest

from napari_medit import catalogue
from napari_medit.batch import read_manifest
from napari_medit.catalogue import METHODS, RunOptions, SliceNoise
from napari_medit.cli import _parser, edit_job, main

README = Path(__file__).resolve().parents[1] / "README.md"

# A valid value other than the default for every parameter of every method. A parameter added to
# the catalogue without a value here fails test_the_table_covers_every_parameter.
OTHER_VALUES = {
    "prompt": "Pleural effusion on the right",
    "inversion_prompt": "Chest X-ray",
    "steps": 20,
    "skip": 5,
    "guidance": 3.5,
    "iterations": 3,
    "strength": 0.6,
    "eta": 0.5,
    "dilation": 9,
    "jump_length": 2,
    "jump_n_sample": 2,
    "inversion_guidance": 2.0,
    "mask_grid": catalogue.MaskGrid.fractional,
    "start": catalogue.RePaintStart.noised_input,
    "loop": catalogue.PIELoop.latent,
    "text_guidance": 5.0,
    "image_guidance": 1.2,
    "threshold": 0.3,
    "relevance_timestep": 0.6,
    "pseudo_masks": "/data/InstructX2X/inference/masks",
}
OTHER_RUN = {
    "seed": 7,
    "axis": "coronal",
    "slices": "3:5",
    "batch_size": 2,
    "slice_noise": SliceNoise.independent,
    "noise_correlation_mm": 4.5,
    "through_plane_smoothing": 0.25,
    "precision": catalogue.Precision.bfloat16,
    "samples": 3,
    "cache_interval": 3,
    "compile_network": True,
}


def test_the_table_covers_every_parameter():
    assert set(catalogue.parameter_names()) == set(OTHER_VALUES)
    assert {f.name for f in catalogue.fields(RunOptions)} == set(OTHER_RUN)


def test_catalogue_imports_neither_torch_nor_qt():
    code = (
        "import sys, napari_medit.catalogue, napari_medit.backends as b; "
        "b.describe(b.model_folders()['demo-brain']);"
        "print(sorted(m for m in ('torch', 'qtpy', 'PyQt6', 'napari') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def as_text(value) -> str:
    return value.value if isinstance(value, enum.Enum) else str(value)


def cli_args(method: str, values: dict, run: dict) -> list[str]:
    args = ["edit", method, "--image", "x.nii.gz", "--out", "y.nii.gz", "--model", "m"]
    for role in METHODS[method].required_masks:
        args += [f"--{role.replace('_', '-')}", f"{role}.nii.gz"]
    for name, value in {**values, **run}.items():  # a yes/no option is a flag
        args += [f"--{name.replace('_', '-')}"] + ([] if value is True else [as_text(value)])
    return args


def manifest_job(tmp_path, method: str, values: dict, run: dict):
    cells = {
        "id": "a",
        "image": "x.nii.gz",
        "method": method,
        "model": "m",
        **{role: f"{role}.nii.gz" for role in METHODS[method].required_masks},
        **{k: as_text(v) for k, v in {**values, **run}.items()},
    }
    path = tmp_path / f"{method}.csv"
    path.write_text(",".join(cells) + "\n" + ",".join(f'"{v}"' for v in cells.values()) + "\n")
    (item,) = read_manifest(path, tmp_path / "out")
    return item.job


@pytest.mark.parametrize("method", list(METHODS))
def test_every_parameter_can_be_set_from_the_cli_and_a_manifest(method, tmp_path):
    spec = METHODS[method]
    values = {f.name: OTHER_VALUES[f.name] for f in catalogue.fields(spec.params)}
    expected = spec.make_params(values)
    for job in (
        edit_job(_parser().parse_args(cli_args(method, values, OTHER_RUN))),
        manifest_job(tmp_path, method, values, OTHER_RUN),
    ):
        assert job.parameters == values
        assert job.check() == expected
        assert job.run == RunOptions(**OTHER_RUN)


@pytest.mark.parametrize("method", list(METHODS))
def test_the_cli_and_a_manifest_agree_on_defaults(method, tmp_path):
    defaults = METHODS[method].make_params({})
    assert edit_job(_parser().parse_args(cli_args(method, {}, {}))).check() == defaults
    assert manifest_job(tmp_path, method, {}, {}).check() == defaults
    assert manifest_job(tmp_path, method, {}, {}).run == RunOptions()


@pytest.mark.parametrize("name", list(METHODS))
def test_every_manifest_column_reaches_the_job(name, tmp_path):
    """A row setting each of a method's parameters, masks and run options away from its default: the
    job carries every value as given (a column read and dropped, or read into another field, fails)."""
    spec = METHODS[name]
    params = {f: OTHER_VALUES[f] for f in spec.params.__dataclass_fields__}
    masks = {role: f"{role}.png" for role in spec.masks}
    row = {"id": "a", "image": "x.nii.gz", "method": name, "model": "m", **masks, **params, **OTHER_RUN}
    cells = {k: getattr(v, "value", v) for k, v in row.items()}
    (tmp_path / "m.csv").write_text(
        ",".join(cells) + "\n" + ",".join(f'"{v}"' for v in cells.values()) + "\n"
    )
    (item,) = read_manifest(tmp_path / "m.csv", tmp_path / "out")
    assert item.job.parameters == params
    assert item.job.run == RunOptions(**OTHER_RUN)
    assert {role: path.name for role, path in item.job.masks.items()} == masks


def test_radedit_skip_follows_steps_unless_given():
    spec = METHODS["radedit"]
    assert spec.make_params({}).skip == 36
    assert spec.make_params({"steps": 10}).skip == 4  # the reference code's 36 of 100
    assert spec.make_params({"steps": 10, "skip": 0}).skip == 0
    with pytest.raises(ValueError, match="skip must be in"):
        spec.make_params({"steps": 10, "skip": 10})


def test_a_parameter_of_another_method_is_refused(tmp_path, capsys):
    assert main([*cli_args("radedit", {}, {}), "--eta", "0.5"]) == 2
    assert "unknown option --eta" in capsys.readouterr().err
    cells = "id,image,method,model,eta\na,x.nii.gz,radedit,m,0.5\n"
    (tmp_path / "m.csv").write_text(cells)
    with pytest.raises(ValueError, match="radedit has no parameter 'eta'"):
        read_manifest(tmp_path / "m.csv", tmp_path / "out")


def test_bad_values_name_the_option(capsys):
    assert main([*cli_args("pie", {}, {}), "--slice-noise", "sometimes"]) == 2
    assert (
        "slice_noise must be one of independent, shared, correlated, got 'sometimes'"
        in capsys.readouterr().err
    )
    assert main([*cli_args("pie", {}, {}), "--through-plane-smoothing", "1.5"]) == 2
    assert "through_plane_smoothing must be between 0 (off) and 1, got 1.5" in capsys.readouterr().err
    assert main([*cli_args("mededit", {}, {}), "--noise-correlation-mm", "0"]) == 2
    assert "noise_correlation_mm must be a positive length in mm, got 0.0" in capsys.readouterr().err
    assert main([*cli_args("pie", {}, {}), "--steps", "ten"]) == 2
    assert "steps must be int, got 'ten'" in capsys.readouterr().err


def test_radedit_from_the_cli_with_fewer_steps_runs_quietly(tmp_path, capfd):
    """--steps 10 alone runs (skip follows it), the provenance records the skip used, and stderr carries
    no library chatter (accelerate notice, 'Loading weights' bars)."""
    assert main(["sample", "cxr", "--out", str(tmp_path)]) == 0
    capfd.readouterr()
    out = tmp_path / "edited.png"
    assert (
        main(
            [
                "edit",
                "radedit",
                "--image",
                str(tmp_path / "cxr.png"),
                "--edit-mask",
                str(tmp_path / "edit_mask.png"),
                "--keep-mask",
                str(tmp_path / "keep_mask.png"),
                "--model",
                "demo-cxr",
                "--steps",
                "10",
                "--slice-noise",
                "shared",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    captured = capfd.readouterr()
    assert captured.out.split() == [str(out), str(out.with_suffix(".json"))]
    for chatter in ("accelerate", "Loading weights", "torchvision", "Traceback"):
        assert chatter not in captured.err
    provenance = json.loads(out.with_suffix(".json").read_text())
    assert provenance["parameters"]["steps"] == 10 and provenance["parameters"]["skip"] == 4
    assert provenance["slice_noise"] == "shared"


def test_pie_eta_reaches_the_edit(tmp_path):
    assert main(["sample", "cxr", "--out", str(tmp_path)]) == 0
    out = tmp_path / "pie.png"
    assert (
        main(
            [
                "edit",
                "pie",
                "--image",
                str(tmp_path / "cxr.png"),
                "--roi-mask",
                str(tmp_path / "edit_mask.png"),
                "--model",
                "demo-cxr",
                "--iterations",
                "1",
                "--steps",
                "4",
                "--eta",
                "0.5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.with_suffix(".json").read_text())["parameters"]["eta"] == 0.5


def test_a_hub_id_answers_at_once_offline(tmp_path, monkeypatch, capsys):
    """ORG/NAME that is no local folder is a hub repository: not in the cache and no --download, it says
    so."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert main(["sample", "cxr", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "edit",
                "sdedit",
                "--image",
                str(tmp_path / "cxr.png"),
                "--model",
                "some-org/some-model",
                "--out",
                str(tmp_path / "x.png"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "some-org/some-model is not in the local Hugging Face cache" in err
    assert "--download" in err and not (tmp_path / "x.png").exists()


def test_readme_lists_what_the_catalogue_says():
    """The README's method table is `napari-medit methods --markdown`; regenerate it when this fails."""
    assert catalogue.markdown_table() in README.read_text()
