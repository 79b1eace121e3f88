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
    return TrainConfig(
        out=out,
        steps=steps,
        batch_size=4,
        learning_rate=1e-3,
        warmup=5,
        validate_every=10_000,
        checkpoint_every=5,
    )


def test_brain_training_lowers_the_loss_and_writes_a_model(tmp_path):
    from napari_medit.training.brain import train_brain

    folder = train_brain(brain_config(tmp_path / "brain", 60), resolution=32)
    log = json.loads((folder / "training_log.json").read_text())
    curve = log["loss_per_10_steps"]
    assert log["steps"] == 60 and len(curve) == 6
    assert log["precision"] in ("float32", "bfloat16")
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


def test_a_finished_run_re_exports_in_float16_from_its_checkpoint(tmp_path):
    """How the bundled demo models were written: `train ... --steps N --resume --save-float16` on a
    checkpoint at step N trains nothing more and saves the same weights, rounded to float16."""
    from napari_medit.cli import main
    from napari_medit.training.brain import train_brain

    folder = train_brain(brain_config(tmp_path / "brain", 5), resolution=32)
    full = load_file(folder / "model.safetensors")
    assert (
        main(
            [
                "train",
                "brain",
                "--out",
                str(folder),
                "--steps",
                "5",
                "--resolution",
                "32",
                "--batch-size",
                "4",
                "--learning-rate",
                "1e-3",
                "--resume",
                "--save-float16",
            ]
        )
        == 0
    )
    half = load_file(folder / "model.safetensors")
    assert half.keys() == full.keys()
    for key, value in full.items():
        assert half[key].dtype == torch.float16 and torch.equal(half[key], value.half()), key
    assert json.loads((folder / "training_log.json").read_text())["steps"] == 5


def test_resume_without_checkpoint_says_so(tmp_path):
    from napari_medit.training.brain import train_brain

    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_brain(brain_config(tmp_path / "none", 5), resolution=32, resume=True)


def test_cxr_training_writes_a_text_conditioned_model(tmp_path):
    from napari_medit.training.cxr import train_cxr

    config = TrainConfig(
        out=tmp_path / "cxr",
        steps=30,
        batch_size=4,
        learning_rate=1e-3,
        warmup=5,
        validate_every=10_000,
        checkpoint_every=10,
    )
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


def test_ema_training_saves_the_average_and_resumes_exactly(tmp_path):
    from napari_medit.training.brain import train_brain

    def config(out, steps):
        return TrainConfig(
            out=out,
            steps=steps,
            batch_size=2,
            learning_rate=1e-3,
            warmup=2,
            validate_every=10_000,
            checkpoint_every=3,
            ema_decay=0.9,
        )

    unbroken = train_brain(config(tmp_path / "unbroken", 6), resolution=32)
    train_brain(config(tmp_path / "broken", 3), resolution=32)
    resumed = train_brain(config(tmp_path / "broken", 6), resolution=32, resume=True)
    saved, again = load_file(unbroken / "model.safetensors"), load_file(resumed / "model.safetensors")
    for key in saved:
        torch.testing.assert_close(saved[key], again[key], rtol=1e-5, atol=1e-6)
    # The saved model is the average, not the last weights (those stay in the checkpoint).
    state = torch.load(unbroken / "checkpoint.pt", weights_only=True)
    live = state["modules"]["unet"]
    average = {k.removeprefix("module."): v for k, v in state["averages"]["unet"].items()}
    assert int(average.pop("n_averaged")) == 6
    changed = [k for k in saved if not torch.equal(saved[k], live[k])]
    assert changed and all(torch.equal(saved[k], average[k]) for k in saved)
    assert json.loads((unbroken / "training_log.json").read_text())["ema_decay"] == 0.9


def test_resume_with_another_ema_setting_is_refused(tmp_path):
    from napari_medit.training.brain import train_brain

    train_brain(brain_config(tmp_path / "plain", 5), resolution=32)
    config = brain_config(tmp_path / "plain", 10)
    config.ema_decay = 0.99
    with pytest.raises(ValueError, match="--ema-decay"):
        train_brain(config, resolution=32, resume=True)


def test_networks_grow_a_level_per_doubling_above_64_pixels():
    from napari_medit.training.brain import network
    from napari_medit.training.cxr import build

    assert network(64)["channels"] == [32, 64, 64] and network(32)["channels"] == [32, 64, 64]
    assert network(128)["channels"] == [32, 64, 64, 128]
    assert network(256)["attention_levels"] == [False, False, False, False, True]
    unet = build(128)[0]
    assert unet.config.block_out_channels == (32, 64, 64, 128)
    assert unet.config.down_block_types[-1] == "CrossAttnDownBlock2D"


def test_ema_warms_up_as_diffusers_ema_model():
    import torch
    from torch.optim.swa_utils import AveragedModel

    from napari_medit.training.loop import ema_with_warmup

    weight = torch.nn.Parameter(torch.zeros(1))
    module = torch.nn.Module()
    module.weight = weight
    average = AveragedModel(module, multi_avg_fn=ema_with_warmup(0.999))
    expected = None
    for n, value in enumerate([4.0, 2.0, 10.0, 6.0]):
        with torch.no_grad():
            weight.fill_(value)
        average.update_parameters(module)
        # the first update copies; then decay (1 + n) / (10 + n) with n the updates so far, below 0.999
        expected = value if expected is None else expected + (1 - (1 + n) / (10 + n)) * (value - expected)
        assert float(average.module.weight) == pytest.approx(expected)


def test_instruction_model_starts_as_the_text_to_image_model_it_is_initialised_from(tmp_path):
    # InstructPix2Pix's initialisation: with the prior's input channel at zero, the new model is the donor
    from napari_medit.training.cxr import train_cxr
    from napari_medit.training.cxr_instruct import build, initialise_from, vocabulary

    donor_folder = train_cxr(
        TrainConfig(
            out=tmp_path / "cxr", steps=2, batch_size=2, warmup=1, validate_every=10_000, checkpoint_every=10
        ),
        resolution=32,
    )
    donor = load_model(donor_folder)
    unet, text_encoder, _ = build(32, vocabulary(), in_channels=2)
    initialise_from(unet, text_encoder, donor_folder)

    assert torch.count_nonzero(unet.conv_in.weight[:, 1]) == 0
    prompt = ["remove the right pleural effusion"]  # 'remove' and 'the' are new words, the rest shared
    with torch.no_grad():
        shared = text_encoder(["right pleural effusion"])
        assert torch.allclose(shared, donor.text_encoder(["right pleural effusion"]), atol=1e-6)
        x, prior = torch.randn(1, 1, 32, 32), torch.randn(1, 1, 32, 32)
        t = torch.tensor([500])
        ours = unet(torch.cat([x, prior], 1), t, encoder_hidden_states=text_encoder(prompt)).sample
        theirs = donor.unet(x, t, encoder_hidden_states=text_encoder(prompt)).sample
    assert torch.allclose(ours, theirs, atol=1e-5)

    # a donor that does not fit is refused by name, before any weight is copied into the new model
    from transformers import CLIPTextConfig, CLIPTextModel

    from napari_medit.backends.text import TransformersTextEncoder

    def snapshot(*modules):
        return [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]

    def unchanged(modules, before):
        return all(
            torch.equal(b[k], v)
            for m, b in zip(modules, before, strict=True)
            for k, v in m.state_dict().items()
        )

    larger, encoder, _ = build(128, vocabulary(), in_channels=2)  # one level more
    before = snapshot(larger, encoder.model)
    with pytest.raises(ValueError, match="same --resolution"):
        initialise_from(larger, encoder, donor_folder)
    assert unchanged((larger, encoder.model), before)

    narrow = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocabulary()),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
        )
    )
    shallower = CLIPTextModel(
        text_encoder.model.config.__class__(
            **{
                **text_encoder.model.config.to_dict(),
                "num_hidden_layers": text_encoder.model.config.num_hidden_layers - 1,
            }
        )
    )
    for other, message in (
        (narrow, "not a CLIP text model of this one's width"),
        (shallower, "another shape"),
    ):
        unet, _, _ = build(32, vocabulary(), in_channels=2)
        before = snapshot(unet, other)
        with pytest.raises(ValueError, match=message):
            initialise_from(unet, TransformersTextEncoder(text_encoder.tokenizer, other, 16), donor_folder)
        assert unchanged((unet, other), before)


def test_an_instruction_model_trains_on_from_its_own_weights(tmp_path):
    # --init-from demo-cxr-instruct: every weight as it was saved, the prior's channel included
    from napari_medit.training.cxr import train_cxr
    from napari_medit.training.cxr_instruct import build, initialise_from, train_cxr_instruct, vocabulary

    def config(name):
        return TrainConfig(
            out=tmp_path / name, steps=2, batch_size=2, warmup=1, validate_every=10_000, checkpoint_every=10
        )

    text_to_image = train_cxr(config("cxr"), resolution=32)
    instruct = train_cxr_instruct(config("instruct"), resolution=32, init_from=text_to_image)
    released = load_model(instruct)
    assert torch.count_nonzero(released.unet.conv_in.weight[:, 1]) > 0  # trained: no longer the donor

    unet, text_encoder, _ = build(32, vocabulary(), in_channels=2)
    initialise_from(unet, text_encoder, instruct)
    for ours, theirs in ((unet, released.unet), (text_encoder.model, released.text_encoder.model)):
        saved = theirs.state_dict()
        assert all(torch.equal(value, saved[name]) for name, value in ours.state_dict().items())

    three_channels, encoder, _ = build(32, vocabulary(), in_channels=3)
    with pytest.raises(ValueError, match="reads 2 channels"):
        initialise_from(three_channels, encoder, instruct)


def test_init_from_is_refused_for_models_that_train_from_scratch(tmp_path, capsys):
    from napari_medit.cli import EXIT_BAD_INPUT, main

    assert main(["train", "brain", "--out", str(tmp_path / "b"), "--init-from", "demo-cxr"]) == EXIT_BAD_INPUT
    assert "--init-from" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_training_autocasts_to_bfloat16_only_where_it_is_native(monkeypatch):
    import torch

    from napari_medit.training.loop import training_precision

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert training_precision(torch.device("cpu")) is torch.float32  # emulated bfloat16 is far slower
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert training_precision(torch.device("cpu")) is torch.bfloat16
