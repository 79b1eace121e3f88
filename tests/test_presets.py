"""Published-model presets, offline: tiny random models saved in the real file layouts."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import BertConfig, BertModel, BertTokenizer

from napari_medit.backends import ModelLoadError, load_model
from napari_medit.backends.presets import RADEDIT_TEXT, RADEDIT_UNET, RADEDIT_VAE

WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "no",
    "acute",
    "cardiopulmonary",
    "process",
    "effusion",
]


def tiny_parts(latent_size=8, text_dim=32):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=text_dim,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        layers_per_block=1,
    )
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}, model_max_length=16)
    text = BertModel(
        BertConfig(
            vocab_size=len(WORDS),
            hidden_size=text_dim,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=128,
        )
    )
    return unet, vae, tokenizer, text


def cache_snapshot(cache, repo_id):
    """The Hugging Face cache layout: models--ORG--NAME/{refs/main, snapshots/<commit>/...}."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def cache_radedit_parts(cache, monkeypatch):
    """The radedit preset's three repositories, tiny and random, in a Hugging Face cache at ``cache``."""
    unet, vae, tokenizer, text = tiny_parts()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    unet.save_pretrained(cache_snapshot(cache, RADEDIT_UNET) / "unet")
    vae.save_pretrained(cache_snapshot(cache, RADEDIT_VAE))
    text_dir = cache_snapshot(cache, RADEDIT_TEXT)
    tokenizer.save_pretrained(text_dir)
    text.save_pretrained(text_dir)


def test_radedit_preset_loads_from_the_cache_offline(tmp_path, monkeypatch, no_network):
    cache_radedit_parts(tmp_path, monkeypatch)
    model = load_model("radedit", trust_remote_code=True)
    assert model.latent and model.latent_factor == 2 and model.resolution == 16
    assert model.text_encoder.use_attention_mask and model.text_encoder.max_length == 128
    config = model.schedule.scheduler.config
    assert config.timestep_spacing == "trailing" and config.steps_offset == 1 and not config.clip_sample
    embedding = model.encode_text(["no acute cardiopulmonary process", ""])
    assert embedding.shape == (2, 128, 32)
    assert next(model.vae.parameters()).dtype == torch.float32


def test_missing_cache_fails_at_once_offline_with_instructions(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"not in the local Hugging Face cache.*--download"):
        load_model("radedit", trust_remote_code=True)
    with pytest.raises(ModelLoadError, match="hf download someone/sd-cxr"):
        load_model("hub:someone/sd-cxr")


def test_remote_code_needs_an_explicit_opt_in(no_network):
    with pytest.raises(ModelLoadError, match="--trust-remote-code"):
        load_model("radedit")


def test_stable_diffusion_folder_loads(tmp_path, no_network):
    unet, vae, tokenizer, text = tiny_parts()
    folder = tmp_path / "pie-sd"
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    tokenizer.save_pretrained(folder / "tokenizer")
    text.save_pretrained(folder / "text_encoder")
    DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    model = load_model(folder)
    assert model.text_conditioned and model.latent and model.resolution == 16
    (folder / "vae" / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="vae"):  # a missing part is named
        load_model(folder)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ModelLoadError, match=r"known: .*radedit"):
        load_model("radedti")


def test_text_encoders_get_the_attention_mask_when_their_config_asks(tmp_path):
    """diffusers' rule: a BERT-type encoder saved with use_attention_mask=true (BiomedCLIP, CXR-BERT
    folders) is given the mask; CLIP's config has no such field and runs without one."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from napari_medit.backends.text import TransformersTextEncoder

    prompt = ["acute effusion"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}, model_max_length=16)
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(
            vocab_size=len(WORDS),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=16,
            use_attention_mask=True,
        )
    ).eval()
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(WORDS),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=16,
        )
    ).eval()
    for name, model in (("bert", bert), ("clip", clip)):
        tokenizer.save_pretrained(tmp_path / name / "tokenizer")
        model.save_pretrained(tmp_path / name / "text_encoder")
    tokens = tokenizer(prompt, padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        masked, unmasked = (
            bert(tokens.input_ids, attention_mask=tokens.attention_mask)[0],
            bert(tokens.input_ids)[0],
        )
        assert not torch.allclose(masked, unmasked, atol=1e-4)  # the padding is attended to without the mask
        from_bert = TransformersTextEncoder.from_folder(tmp_path / "bert")
        from_clip = TransformersTextEncoder.from_folder(tmp_path / "clip")
        assert from_bert.use_attention_mask and not from_clip.use_attention_mask
        torch.testing.assert_close(from_bert(prompt), masked)
        torch.testing.assert_close(from_clip(prompt), clip(tokens.input_ids)[0])
        # a napari-medit model folder's medit.json may still say otherwise, explicitly
        assert not TransformersTextEncoder.from_folder(
            tmp_path / "bert", use_attention_mask=False
        ).use_attention_mask


def test_the_radedit_preset_can_run_its_text_encoder_without_the_attention_mask(
    tmp_path, monkeypatch, no_network
):
    """Whether RadEdit's own pipeline passes BioViL-T the mask is not confirmable offline: the second
    preset runs it without, so the two can be compared on the real weights."""
    cache_radedit_parts(tmp_path, monkeypatch)
    masked = load_model("radedit", trust_remote_code=True)
    unmasked = load_model("radedit-unmasked-text", trust_remote_code=True)
    assert masked.text_encoder.use_attention_mask and not unmasked.text_encoder.use_attention_mask
    assert unmasked.name == "radedit-unmasked-text"
    with torch.no_grad():
        a, b = masked.encode_text(["effusion"]), unmasked.encode_text(["effusion"])
    assert a.shape == b.shape and not torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize(
    "name, advice",
    [
        ("x2x.bin", "Stable Diffusion 1.x .ckpt/.safetensors files .* as they are"),
        ("mededit.pt", "napari-medit import-mededit .*mededit.pt --out FOLDER"),
    ],
)
def test_a_single_checkpoint_file_is_told_what_to_do(tmp_path, name, advice, no_network):
    (tmp_path / name).write_bytes(b"not really")
    with pytest.raises(ModelLoadError, match=f"single checkpoint file.*{advice}"):
        load_model(tmp_path / name)


def test_a_composed_folder_takes_the_unet_from_one_folder_and_the_rest_from_another(tmp_path, no_network):
    """As PIE's run_pie.py composes its model: the fine-tune's UNet, sd-v1-4's VAE, text encoder,
    tokenizer and scheduler. Here the 'fine-tune' is a UNet with other weights."""
    from napari_medit.backends import describe

    unet, vae, tokenizer, text = tiny_parts()
    base = tmp_path / "sd-v1-4"
    unet.save_pretrained(base / "unet")
    vae.save_pretrained(base / "vae")
    tokenizer.save_pretrained(base / "tokenizer")
    text.save_pretrained(base / "text_encoder")
    DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False).save_pretrained(base / "scheduler")
    (base / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    tuned = tiny_parts()[0]
    with torch.no_grad():
        for weights in tuned.parameters():
            weights.add_(1.0)
    tuned.save_pretrained(tmp_path / "pie-checkpoint" / "unet")
    composed = tmp_path / "models" / "pie-on-sd"
    composed.mkdir(parents=True)
    medit = {"format": "napari-medit-model/1", "backend": "stable-diffusion-parts", "name": "pie-on-sd"}
    (composed / "medit.json").write_text(
        json.dumps({**medit, "unet": "../../pie-checkpoint/unet", "parts": str(base)})
    )

    model = load_model(composed)
    for mine, theirs in zip(model.unet.parameters(), tuned.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    for mine, theirs in zip(model.vae.parameters(), vae.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    assert model.name == "pie-on-sd" and model.text_conditioned and model.resolution == 16
    described = describe(composed)
    assert described["resolution"] == 16 and described["text_conditioned"] and "pie" in described["methods"]
    # A part that is not there is named, with the folder it was looked for in.
    (composed / "medit.json").write_text(json.dumps({**medit, "unet": "../../nowhere", "parts": str(base)}))
    with pytest.raises(ModelLoadError, match=r"needs the folders .*nowhere"):
        load_model(composed)
    (composed / "medit.json").write_text(json.dumps(medit))
    with pytest.raises(ModelLoadError, match="'unet' is missing: the UNet's folder"):
        load_model(composed)
