import json

import pytest
import tiny_models
import torch

from napari_medit.backends import CONFIG_NAME, ModelLoadError, load_model, save_model

MONAI_CONFIG = {
    "name": "tiny-monai",
    "resolution": 16,
    "value_range": [0, 1],
    "condition_names": ["pathology_mask", "brain_mask"],
    "network": dict(
        spatial_dims=2,
        in_channels=3,
        out_channels=1,
        channels=[8, 16],
        attention_levels=[False, True],
        num_res_blocks=1,
        num_head_channels=8,
        norm_num_groups=4,
    ),
    "scheduler": {
        "class": "DDPMScheduler",
        "num_train_timesteps": 1000,
        "schedule": "linear_beta",
        "beta_start": 1e-4,
        "beta_end": 2e-2,
    },
}


def same_outputs(a, b, channels):
    x = torch.randn(2, channels, 16, 16, generator=torch.Generator().manual_seed(0))
    conditions = torch.rand(2, len(a.condition_names), 16, 16) if a.condition_names else None
    with torch.no_grad():
        torch.testing.assert_close(a(x, 321, None, conditions), b(x, 321, None, conditions))


def test_monai_model_round_trips(tmp_path):
    model = tiny_models.monai_unet()
    loaded = load_model(save_model(tmp_path / "m", model, MONAI_CONFIG))
    assert loaded.condition_names == ("pathology_mask", "brain_mask")
    assert loaded.weights_hash == model.weights_hash
    same_outputs(model, loaded, 1)


def test_diffusers_model_round_trips(tmp_path):
    model = tiny_models.pixel_unet(conditions=("pathology_mask",))
    folder = save_model(
        tmp_path / "d", model, {"name": "tiny", "condition_names": ["pathology_mask"], "value_range": [-1, 1]}
    )
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_model(folder)
    assert loaded.resolution == 16 and loaded.condition_names == ("pathology_mask",)
    same_outputs(model, loaded, 1)


@pytest.mark.parametrize("backend", ["monai", "diffusers"])
def test_float16_storage_halves_the_weights_and_loads_as_float32(tmp_path, backend):
    """save_model(float16=True) (train --save-float16, the bundled demo models): the stored tensors are
    half precision, the loaded network is float32 holding exactly the rounded weights, and the live
    network that was saved is untouched."""
    from safetensors import safe_open

    if backend == "monai":
        model, config, weights, channels = tiny_models.monai_unet(), MONAI_CONFIG, "model.safetensors", 1
    else:
        model, config, channels = (
            tiny_models.pixel_unet(conditions=("pathology_mask",)),
            {"name": "tiny", "condition_names": ["pathology_mask"], "value_range": [-1, 1]},
            1,
        )
        weights = "unet/diffusion_pytorch_model.safetensors"
    before = {k: v.clone() for k, v in model.network.state_dict().items()}
    full = save_model(tmp_path / "full", model, config) / weights
    half = save_model(tmp_path / "half", model, config, float16=True) / weights
    with safe_open(half, "pt") as stored:
        dtypes = {stored.get_slice(k).get_dtype() for k in stored.keys()}  # noqa: SIM118 - no __iter__
    assert dtypes == {"F16"}
    assert half.stat().st_size < 0.55 * full.stat().st_size
    for key, value in model.network.state_dict().items():
        assert value.dtype == torch.float32 and torch.equal(value, before[key])
    loaded = load_model(half.parent if backend == "monai" else half.parent.parent)
    for key, value in loaded.network.state_dict().items():
        assert value.dtype == before[key].dtype
        assert torch.equal(value, before[key].half().to(value.dtype)), key
    x = torch.randn(2, channels, 16, 16, generator=torch.Generator().manual_seed(0))
    conditions = torch.rand(2, len(model.condition_names), 16, 16)
    with torch.no_grad():  # fp16 rounding of the weights, not of the computation: outputs agree closely
        torch.testing.assert_close(
            model(x, 321, None, conditions), loaded(x, 321, None, conditions), atol=5e-3, rtol=5e-3
        )


def test_bad_model_folders(tmp_path):
    with pytest.raises(ModelLoadError, match="no such model folder"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a napari-medit model folder"):
        load_model(tmp_path / "empty")
    folder = save_model(tmp_path / "m", tiny_models.monai_unet(), MONAI_CONFIG)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"no model.safetensors"):
        load_model(folder)
    folder = save_model(tmp_path / "m2", tiny_models.monai_unet(), MONAI_CONFIG)
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["network"]["channels"] = [8, 32]
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"cannot load the model|do not match"):
        load_model(folder)
    with (
        pytest.raises(ModelLoadError, match="no CUDA GPU")
        if not torch.cuda.is_available()
        else pytest.raises(Exception)
    ):
        load_model(save_model(tmp_path / "m3", tiny_models.monai_unet(), MONAI_CONFIG), device="cuda")


TINY_MEDEDIT = dict(channels=[8, 16, 16], num_head_channels=8, norm_num_groups=4)


def test_official_mededit_checkpoint_layout_imports(tmp_path):
    from monai.networks.nets import DiffusionModelUNet

    from napari_medit.backends.mededit_checkpoint import MEDEDIT_NETWORK, import_mededit

    torch.manual_seed(0)
    network = DiffusionModelUNet(**{**MEDEDIT_NETWORK, **TINY_MEDEDIT})
    torch.save(
        {"model_weights": {f"unet.{k}": v for k, v in network.state_dict().items()}}, tmp_path / "best.pt"
    )
    model = load_model(
        import_mededit(tmp_path / "best.pt", tmp_path / "mededit", TINY_MEDEDIT, resolution=16)
    )
    assert model.condition_names == ("pathology_mask", "brain_mask")
    x, conditions = torch.randn(1, 1, 16, 16), torch.rand(1, 2, 16, 16)
    with torch.no_grad():
        expected = network(torch.cat([x, conditions], 1), timesteps=torch.tensor([10]))
        torch.testing.assert_close(model(x, 10, None, conditions), expected)


class NotATensor:
    pass


def test_checkpoints_needing_pickle_code_are_refused(tmp_path):
    from napari_medit.backends.mededit_checkpoint import import_mededit

    torch.save({"model_weights": {}, "trainer": NotATensor()}, tmp_path / "pickled.pt")
    with pytest.raises(ModelLoadError, match="would run their code"):
        import_mededit(tmp_path / "pickled.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
