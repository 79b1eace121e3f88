"""Stable Diffusion 1.x checkpoints in their original (LDM) layout, loaded offline.

A tiny random UNet, VAE and CLIP text encoder are written out in the original key layout (the inverse of
diffusers' converter, below) and loaded back: every weight must come back exactly. The shipped
configurations are checked against Stable Diffusion 1.x's published sizes and CLIP's tokenizer."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from napari_medit.backends import ModelLoadError, load_model
from napari_medit.backends.single_file import SD1_CONFIGS, load_stable_diffusion_checkpoint
from napari_medit.editing import edit

LAYERS = 2  # per block, as in SD 1.x: the original layout's block numbers follow from it
BLOCKS = 4


def unet_to_original(state: dict) -> dict:
    """diffusers' UNet2DConditionModel keys -> LDM's ``model.diffusion_model.*`` (SD 1.x's layout)."""
    blocks = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    for i in range(BLOCKS):
        for j in range(LAYERS):
            n = 1 + i * (LAYERS + 1) + j
            blocks += [(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{n}.0.")]
            blocks += [(f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{n}.1.")]
        if i < BLOCKS - 1:
            blocks += [
                (f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (LAYERS + 1)}.0.op.")
            ]
        for j in range(LAYERS + 1):
            n = i * (LAYERS + 1) + j
            blocks += [(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{n}.0.")]
            blocks += [(f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{n}.1.")]
        if i < BLOCKS - 1:  # the first up block has no attention: its upsampler is the block's second layer
            blocks += [(f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{n}.{1 if i == 0 else 2}.")]
    resnet = [
        ("norm1.", "in_layers.0."),
        ("conv1.", "in_layers.2."),
        ("norm2.", "out_layers.0."),
        ("conv2.", "out_layers.3."),
        ("time_emb_proj.", "emb_layers.1."),
        ("conv_shortcut.", "skip_connection."),
    ]
    return {
        "model.diffusion_model." + _renamed(key, blocks, resnet if ".resnets." in key else []): value
        for key, value in state.items()
    }


def vae_to_original(state: dict) -> dict:
    """diffusers' AutoencoderKL keys -> LDM's ``first_stage_model.*``."""
    blocks = [
        ("encoder.conv_norm_out.", "encoder.norm_out."),
        ("decoder.conv_norm_out.", "decoder.norm_out."),
    ]
    for side in ("encoder", "decoder"):
        blocks += [
            (f"{side}.mid_block.resnets.0.", f"{side}.mid.block_1."),
            (f"{side}.mid_block.resnets.1.", f"{side}.mid.block_2."),
            (f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1."),
        ]
    for i in range(BLOCKS):
        for j in range(LAYERS + 1):
            blocks += [(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.")]
            blocks += [(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{BLOCKS - 1 - i}.block.{j}.")]
        blocks += [(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")]
        blocks += [(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{BLOCKS - 1 - i}.upsample.")]
    inner = [
        ("conv_shortcut.", "nin_shortcut."),
        ("group_norm.", "norm."),
        ("to_q.", "q."),
        ("to_k.", "k."),
        ("to_v.", "v."),
        ("to_out.0.", "proj_out."),
    ]
    original = {}
    for key, value in state.items():
        if "attentions" in key and value.ndim == 2:  # LDM's attention projections are 1x1 convolutions
            value = value[:, :, None, None]
        original["first_stage_model." + _renamed(key, blocks, inner)] = value
    return original


def _renamed(key: str, blocks: list, inner: list) -> str:
    for new, old in blocks:
        if key.startswith(new):
            key = old + key[len(new) :]
            break
    for new, old in inner:
        key = key.replace(new, old)
    return key


def tiny_sd1(tmp_path, in_channels: int):
    """A tiny SD 1.x (its block layout, small widths), its configuration folder, and its checkpoint."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=LAYERS,
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * BLOCKS,
        up_block_types=("UpDecoderBlock2D",) * BLOCKS,
        layers_per_block=LAYERS,
        latent_channels=4,
        norm_num_groups=4,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
        )
    )
    configs = tmp_path / "configs"
    unet.save_config(configs / "unet")
    vae.save_config(configs / "vae")
    text.config.save_pretrained(configs / "text_encoder")
    for part in ("tokenizer", "scheduler"):
        shutil.copytree(SD1_CONFIGS / part, configs / part)
    clip = {
        f"cond_stage_model.transformer.text_model.{k.removeprefix('text_model.')}": v
        for k, v in text.state_dict().items()
    }
    clip["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    ema = {"model_ema.decay": torch.tensor(0.9999)}  # what LDM training keeps beside the weights
    state = {**unet_to_original(unet.state_dict()), **vae_to_original(vae.state_dict()), **clip, **ema}
    return (unet, vae, text), configs, state


def assert_same_weights(loaded: torch.nn.Module, original: torch.nn.Module):
    want, got = original.state_dict(), loaded.state_dict()
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key


@pytest.mark.parametrize("in_channels, suffix", [(8, ".ckpt"), (4, ".safetensors")])
def test_an_original_layout_checkpoint_loads_offline_into_exactly_its_weights(
    tmp_path, in_channels, suffix, no_network
):
    """InstructPix2Pix's 8-channel UNet from a Lightning .ckpt, a plain SD 1.x one from safetensors."""
    (unet, vae, text), configs, state = tiny_sd1(tmp_path, in_channels)
    path = tmp_path / f"model{suffix}"
    if suffix == ".ckpt":
        torch.save({"state_dict": state, "global_step": 22000}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, path)
    model = load_stable_diffusion_checkpoint(path, configs=configs)
    assert_same_weights(model.unet, unet)
    assert_same_weights(model.vae, vae)
    assert_same_weights(model.text_encoder.model, text)
    assert model.image_conditioned is (in_channels == 8)
    scheduler = model.schedule.scheduler
    assert type(scheduler).__name__ == "PNDMScheduler"  # what the converter writes by default
    assert scheduler.config.steps_offset == 1 and not scheduler.config.set_alpha_to_one
    # the text encoder reads what the tokenizer makes: CLIP's ids, padded to 77
    tokens = model.text_encoder.tokens(["a photo of a cat"]).input_ids[0]
    assert tokens[:7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407] and len(tokens) == 77
    with torch.no_grad():
        assert torch.equal(model.encode_text(["a photo of a cat"]), text(tokens[None])[0])


def test_an_instructx2x_checkpoint_file_edits_like_any_model(tmp_path, monkeypatch, no_network):
    """``--model file.ckpt``: loaded by path and edited, outside the region left exactly as it was."""
    import napari_medit.backends.single_file as single_file

    _, configs, state = tiny_sd1(tmp_path, 8)
    torch.save({"state_dict": state}, tmp_path / "instructx2x.ckpt")
    monkeypatch.setattr(single_file, "SD1_CONFIGS", configs)  # the tiny model's sizes, not SD 1.x's
    image = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    roi = np.zeros((64, 64), bool)
    roi[16:40, 16:40] = True
    result = edit(
        "instructx2x",
        image,
        model=load_model(tmp_path / "instructx2x.ckpt"),
        prompt="remove the effusion",
        roi_mask=roi,
        steps=2,
        threshold=0.0,
        seed=0,
    )
    assert result.provenance["model"]["name"] == "instructx2x"
    assert np.array_equal(result.image.array[~roi], image[~roi]) and np.isfinite(result.image.array).all()


def test_the_shipped_configurations_are_stable_diffusion_1s():
    """Built on the meta device (no memory): SD 1.x's published parameter counts."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD1_CONFIGS / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD1_CONFIGS / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(SD1_CONFIGS / "text_encoder"))
    counts = [sum(p.numel() for p in part.parameters()) for part in (unet, vae, text)]
    assert counts == [859_520_964, 83_653_863, 123_060_480]


def test_a_checkpoint_that_is_not_sd1_is_named(tmp_path, no_network):
    _, _, state = tiny_sd1(tmp_path, 8)
    no_text = tmp_path / "no_text.ckpt"
    torch.save({k: v for k, v in state.items() if not k.startswith("cond_stage_model.")}, no_text)
    with pytest.raises(ModelLoadError, match=r"not a Stable Diffusion 1\.x checkpoint: no CLIP text encoder"):
        load_model(no_text)
    sd2 = tmp_path / "sd2.ckpt"
    torch.save({**state, "cond_stage_model.model.token_embedding.weight": torch.zeros(2, 2)}, sd2)
    with pytest.raises(ModelLoadError, match=r"Stable Diffusion 2\.x checkpoint"):
        load_model(sd2)
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="cannot read it as a checkpoint"):
        load_model(corrupt)
