import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.data import get_testdata_file

from napari_medit.cli import main

SAMPLE_T1 = Path(__file__).parents[1] / "napari_medit" / "sample_data" / "brain_t1.nii.gz"


def test_info_json_matches_the_file(capsys):
    assert main(["info", str(SAMPLE_T1), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shape"] == [131, 155, 126]
    assert summary["spacing"] == [1.5, 1.5, 1.5]
    assert summary["orientation"] == "RAS"
    np.testing.assert_allclose(summary["affine"], nib.load(SAMPLE_T1).affine)
    assert summary["nifti"]["sform_code"] == 4


def test_info_text_for_dicom(capsys):
    assert main(["info", get_testdata_file("MR_small.dcm")]) == 0
    out = capsys.readouterr().out
    assert "modality" in out and "MR" in out and "affine (voxel -> RAS+ mm):" in out


def test_info_on_a_dicom_folder_names_the_series(capsys, oblique_series):
    assert main(["info", str(oblique_series["folder"]), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shape"] == [7, 12, 10] and summary["oblique"] is True
    assert summary["series"]["files"] == 7


def test_bad_input_exits_2_with_one_line_and_no_traceback(tmp_path):
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(b"nonsense")
    for args in (["info", str(bad)], ["info", str(tmp_path / "missing.dcm")], ["info", str(tmp_path)]):
        run = subprocess.run(
            [sys.executable, "-m", "napari_medit.cli", *args], capture_output=True, text=True
        )
        assert run.returncode == 2, run.stderr
        assert "Traceback" not in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1
        assert run.stderr.startswith("napari-medit: error: ")


def test_sample_brain_writes_the_three_volumes(tmp_path, capsys):
    assert main(["sample", "brain", "--out", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["brain_mask.nii.gz", "lesion_mask.nii.gz", "t1.nii.gz"]
    assert nib.load(tmp_path / "t1.nii.gz").shape == (131, 155, 126)


def test_sample_cxr_writes_pngs(tmp_path):
    assert main(["sample", "cxr", "--out", str(tmp_path)]) == 0
    for name in ("cxr.png", "edit_mask.png", "keep_mask.png", "lung_mask.png"):
        assert (tmp_path / name).stat().st_size > 0
    findings = json.loads((tmp_path / "cxr_phantom.json").read_text())
    assert findings["effusion"] == "right"


def test_edit_writes_result_with_source_geometry_and_provenance(tmp_path, capsys):
    import tiny_models
    from test_model_folder import MONAI_CONFIG

    from napari_medit.backends import save_model

    model = save_model(tmp_path / "model", tiny_models.monai_unet(), MONAI_CONFIG)
    assert main(["sample", "brain", "--out", str(tmp_path / "brain")]) == 0
    brain = tmp_path / "brain"
    out = tmp_path / "out" / "cf.nii.gz"
    args = [
        "edit",
        "mededit",
        "--image",
        str(brain / "t1.nii.gz"),
        "--pathology-mask",
        str(brain / "lesion_mask.nii.gz"),
        "--brain-mask",
        str(brain / "brain_mask.nii.gz"),
        "--model",
        str(model),
        "--steps",
        "3",
        "--axis",
        "2",
        "--slices",
        "62:64",
        "--seed",
        "4",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    source, result = nib.load(brain / "t1.nii.gz"), nib.load(out)
    np.testing.assert_array_equal(source.affine, result.affine)
    assert result.get_data_dtype() == source.get_data_dtype()
    changed = np.argwhere(np.asanyarray(source.dataobj) != np.asanyarray(result.dataobj))
    assert changed.size and set(changed[:, 2]) <= {62, 63}
    provenance = json.loads((tmp_path / "out" / "cf.json").read_text())
    assert provenance["method"] == "mededit" and provenance["slices"] == [62, 63] and provenance["seed"] == 4
    assert provenance["parameters"]["steps"] == 3


def test_edit_bad_input_writes_nothing(tmp_path):
    assert main(["sample", "brain", "--out", str(tmp_path / "brain")]) == 0
    brain = tmp_path / "brain"
    out = tmp_path / "out" / "cf.nii.gz"
    common = ["--image", str(brain / "t1.nii.gz"), "--out", str(out)]
    assert main(["edit", "mededit", *common, "--model", str(tmp_path / "nowhere")]) == 2
    assert (
        main(
            [
                "edit",
                "mededit",
                "--image",
                str(brain / "t1.nii.gz"),
                "--out",
                str(tmp_path / "x.png"),
                "--model",
                "m",
            ]
        )
        == 2
    )
    assert not out.exists() and not (tmp_path / "x.png").exists()
