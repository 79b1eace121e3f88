"""Short training runs on the bundled data: the loss goes down, and a resumed run is the unbroken one."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from napari_medit.backends import describe, load_model
from napari_medit.training.brain import synthetic_lesion
from napari_medit.training.loop import TrainConfig


def brain_config(out, steps):
    return TrainConfig(out=out, steps=steps, batch_size=4, learning_rate=1e-3, warmup=5,
                       validate_every=10_000, checkpoint_every=5)


def test_brain_training_lowers_the_loss_and_writes_a_model(tmp_path):
    from napari_medit.training.brain import train_brain

    folder = train_brain(brain_config(tmp_path / "brain", 60), resolution=32)
    log = json.loads((folder / "training_log.json").read_text())
    curve = log["loss_per_10_steps"]
    assert log["steps"] == 60 and len(curve) == 6
    assert curve[-1] < 0.5 * curve[0]
    model = load_model(folder)
    assert model.condition_names == ("pathology_mask", "brain_mask") and model.resolution == 32
    assert "mededit" in describe(folder)["methods"]


def test_resume_continues_exactly_where_training_stopped(tmp_path):
    from napari_medit.training.brain import train_brain

    unbroken = train_brain(brain_config(tmp_path / "unbroken", 10), resolution=32)
    broken = train_brain(brain_config(tmp_path / "broken", 5), resolution=32)
    resumed = train_brain(brain_config(tmp_path / "broken", 10), resolution=32, resume=True)
    assert resumed == broken
    a, b = load_file(unbroken / "model.safetensors"), load_file(resumed / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert json.loads((resumed / "training_log.json").read_text())["steps"] == 10


def test_resume_without_checkpoint_says_so(tmp_path):
    from napari_medit.training.brain import train_brain

    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_brain(brain_config(tmp_path / "none", 5), resolution=32, resume=True)


def test_cxr_training_writes_a_text_conditioned_model(tmp_path):
    from napari_medit.training.cxr import train_cxr

    config = TrainConfig(out=tmp_path / "cxr", steps=30, batch_size=4, learning_rate=1e-3, warmup=5,
                         validate_every=10_000, checkpoint_every=10)
    folder = train_cxr(config, resolution=32)
    log = json.loads((folder / "training_log.json").read_text())
    assert log["loss_per_10_steps"][-1] < log["loss_per_10_steps"][0]
    model = load_model(folder)
    assert model.text_conditioned and model.resolution == 32
    embedding = model.encode_text(["Pleural effusion", "No findings"])
    assert embedding.shape[0] == 2 and not torch.allclose(embedding[0], embedding[1])


def test_synthetic_lesion_stays_in_the_brain_and_is_darker():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    brain = (yy - 32) ** 2 + (xx - 32) ** 2 < 25**2
    image = np.where(brain, 0.8, 0.0).astype(np.float32)
    edited, lesion = synthetic_lesion(image, brain, rng)
    assert lesion.any() and not lesion[~brain].any()
    assert edited[lesion].mean() < 0.6 and np.allclose(edited[~brain], 0)
