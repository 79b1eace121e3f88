"""Instruction editing: parity with diffusers' InstructPix2Pix pipeline, Region-Specific Editing's
guarantees, and the instruction reader and region templates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medit.backends import ModelLoadError, load_model
from napari_medit.catalogue import InstructParams, InstructX2XParams
from napari_medit.editing import EditError, edit
from napari_medit.editing.control import NoiseSource, Progress
from napari_medit.editing.instruct import instruct
from napari_medit.editing.instructx2x import relevance_map
from napari_medit.instructions import (
    Change,
    Finding,
    Instruction,
    Side,
    hemithorax,
    read_instruction,
    region_template,
    write_instruction,
)
from napari_medit.sample_data.cxr_phantom import generate_cxr_phantom

PROMPT = "remove the right pleural effusion"


def tiny_pix2pix(folder, scheduler="DDIMScheduler"):
    """A random InstructPix2Pix pipeline in diffusers' layout: 16 px images, 4 x 8 x 8 latents."""
    import diffusers
    from diffusers import AutoencoderKL, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
    from transformers import BertTokenizer, CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=8,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *sorted(set((PROMPT + " add a left").split()))]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)}, model_max_length=8)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(words),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=8,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
        )
    )
    schedule = getattr(diffusers, scheduler)(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        **({"clip_sample": False, "set_alpha_to_one": False} if scheduler == "DDIMScheduler" else {}),
    )
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=schedule,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe


class StartFrom(NoiseSource):
    """Seeded noise, except the starting latents, which are given (as the pipeline's ``latents=``)."""

    def __init__(self, start):
        super().__init__([0])
        self.start = start

    def draw(self, shape, kind=""):
        return self.start.clone() if kind == "start" else super().draw(shape, kind)


@pytest.mark.parametrize(
    "scheduler", ["DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"]
)
def test_instruct_matches_diffusers_instruct_pix2pix_pipeline(tmp_path, scheduler):
    """Euler ancestral (public IP2P checkpoints) draws step noise: the slice's own generator, seeded
    as napari-medit seeds it, gives the pipeline the same draws."""
    import zlib

    pipe = tiny_pix2pix(tmp_path / "ip2p", scheduler)
    model = load_model(tmp_path / "ip2p")
    assert model.image_conditioned and model.latent and model.resolution == 16
    gray = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    start = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        step_noise = torch.Generator().manual_seed(zlib.crc32(b"0:scheduler-step"))  # NoiseSource([0])'s
        expected = pipe(
            PROMPT,
            image=gray.float().expand(-1, 3, -1, -1),
            num_inference_steps=10,
            guidance_scale=7.5,
            image_guidance_scale=1.5,
            latents=start,  # the pipeline scales them by init_noise_sigma
            output_type="latent",
            generator=step_noise,
        ).images
        ours = instruct(
            model,
            model.encode(gray),
            image=gray,
            params=InstructParams(prompt=PROMPT, steps=10),
            noise=StartFrom(start.double()),
            progress=Progress(),
        )
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours.float(), expected, atol=2e-4, rtol=1e-4)
    assert (ours.float() - expected).abs().max() < 1e-2 * expected.abs().max()


@pytest.fixture(scope="module")
def pix2pix(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "ip2p"
    tiny_pix2pix(folder)
    return load_model(folder)


def chest(size=48):
    return (generate_cxr_phantom(size, 7, effusion="right").image * 255).round().astype(np.uint8)


def test_region_specific_editing_changes_nothing_outside_its_thresholded_map(pix2pix):
    image = chest()
    roi = np.zeros(image.shape, bool)
    roi[20:44, 4:24] = True
    result = edit("instructx2x", image, model=pix2pix, prompt=PROMPT, roi_mask=roi, steps=8, seed=3)
    mask = result.masks["guidance_mask"] & roi  # thresholded on the model's grid, cut to the region here
    assert mask.any() and not mask.all()
    # the map is relevance x region (the region on the model's grid, so its edge is soft)
    assert result.maps["guidance_map"][~roi].mean() < 0.5 * result.maps["guidance_map"][roi].mean()
    np.testing.assert_array_equal(result.image.array[~mask], image[~mask])
    assert (result.image.array[mask] != image[mask]).any()
    guidance = result.maps["guidance_map"]
    assert guidance.shape == image.shape and guidance.min() >= 0 and guidance.max() <= 1
    assert result.provenance["maps"] == ["guidance_map"]
    again = edit("instructx2x", image, model=pix2pix, prompt=PROMPT, roi_mask=roi, steps=8, seed=3)
    np.testing.assert_array_equal(again.maps["guidance_map"], guidance)
    np.testing.assert_array_equal(again.image.array, result.image.array)
    other = edit("instructx2x", image, model=pix2pix, prompt=PROMPT, roi_mask=roi, steps=8, seed=4)
    assert not np.array_equal(other.maps["guidance_map"], guidance)


def test_a_threshold_of_zero_takes_every_pixel_as_the_reference_does(pix2pix):
    """rse_x2x.py keeps pixels whose guidance is >= tau: at tau = 0, every one, the map's zeros too."""
    result = edit("instructx2x", chest(), model=pix2pix, prompt=PROMPT, steps=2, threshold=0.0)
    assert result.masks["guidance_mask"].all()


def test_without_a_region_the_instruction_names_its_template(pix2pix):
    image = chest()
    result = edit("instructx2x", image, model=pix2pix, prompt=PROMPT, steps=4, seed=0)
    template = region_template(read_instruction(PROMPT), image.shape)
    np.testing.assert_array_equal(result.masks["roi_mask"], template)
    np.testing.assert_array_equal(result.image.array[~template], image[~template])


def relevance_of(model, x0, size=(4, 4)) -> torch.Tensor:
    """The relevance map of ``model`` (a stand-in returning eps) on ``x0``: empty texts, defaults."""
    text = torch.zeros(1, 1, 1)
    return relevance_map(model, x0, x0, text, text, InstructX2XParams(), NoiseSource([0]), None, size)[0, 0]


def test_a_pixel_space_models_relevance_is_pooled_to_the_references_grid():
    class Ramp:  # a per-pixel checkerboard difference: pooled over 8 x 8 cells it is flat
        schedule = type("S", (), {"num_train_timesteps": 1000, "add_noise": lambda self, x, n, t: x})()
        latent_factor = 1

        def __call__(self, x, t, text, conditions):
            eps = torch.zeros_like(x)
            checker = (torch.arange(32)[:, None] + torch.arange(32)[None]) % 2
            cells = torch.arange(4).repeat_interleave(8)  # 4 x 4 cells of 8 px, columns 0..3
            eps[: x.shape[0] // 2, 0] = checker * 2.0 + cells[None, :]
            return eps

    x0 = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    out = relevance_of(Ramp(), x0)
    # each 8 x 8 cell: mean checker 1 + its column index; min-max over 1..4 -> 0, 1/3, 2/3, 1 per column
    torch.testing.assert_close(out, torch.tensor([0, 1 / 3, 2 / 3, 1], dtype=out.dtype).expand(4, 4))


def test_a_lung_mask_cuts_the_lung_templates_but_not_the_hearts(pix2pix):
    phantom = generate_cxr_phantom(48, 7, effusion="right")
    image, lungs = (phantom.image * 255).round().astype(np.uint8), phantom.masks["lungs"]
    result = edit("instructx2x", image, model=pix2pix, prompt=PROMPT, lung_mask=lungs, steps=2, seed=0)
    region = result.masks["roi_mask"]
    template = region_template(read_instruction(PROMPT), image.shape)
    assert region.any() and not (region & ~template).any()
    assert region.sum() < template.sum()  # cut to the (widened) lungs
    heart = region_template(read_instruction("enlarge the heart"), (48, 48))
    np.testing.assert_array_equal(
        region_template(read_instruction("enlarge the heart"), (48, 48), lungs), heart
    )


def test_relevance_map_clips_high_outliers_and_spans_zero_to_one():
    class Difference:  # eps(text) - eps(no text) is a ramp with one hot cell
        schedule = type("S", (), {"num_train_timesteps": 1000, "add_noise": lambda self, x, n, t: x})()
        latent_factor = 8  # a Stable Diffusion latent grid: the map is read cell by cell, unpooled

        def __call__(self, x, t, text, conditions):
            eps = torch.zeros_like(x)
            ramp = torch.arange(16, dtype=x.dtype).reshape(4, 4)
            ramp[0, 0] = 1000.0  # an outlier far above Q3 + 1.5 IQR
            eps[: x.shape[0] // 2, 0] = ramp
            return eps

    x0 = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    out = relevance_of(Difference(), x0)
    values = torch.arange(16, dtype=torch.float64)
    values[0] = 1000.0
    q1, q3 = torch.quantile(values, 0.25), torch.quantile(values, 0.75)
    fence = q3 + 1.5 * (q3 - q1)  # 15.25 + 1.5 * 7.5 = 26.5: the outlier is clipped to it
    expected = torch.minimum(values, fence)
    expected = ((expected - expected.min()) / (expected.max() - expected.min())).reshape(4, 4)
    torch.testing.assert_close(out, expected)
    assert out[0, 0] == 1 and out[0, 1] == 0


def test_instruction_methods_need_an_instruction_model_and_others_refuse_one(pix2pix):
    from diffusers import DDIMScheduler

    from napari_medit.testing import GaussianDenoiser

    plain = GaussianDenoiser(DDIMScheduler(), resolution=16, means={"": 0.0, PROMPT: 1.0})
    with pytest.raises(EditError, match="needs an instruction model"):
        edit("instruct", np.zeros((16, 16)), model=plain, prompt=PROMPT)
    with pytest.raises(EditError, match=r"instruction model .* use instruct, instructx2x"):
        edit("sdedit", np.zeros((16, 16)), model=pix2pix)


def test_instruct_from_pure_noise_and_with_strength(pix2pix):
    image = chest()
    full = edit("instruct", image, model=pix2pix, prompt=PROMPT, steps=6, seed=0)
    assert full.image.array.shape == image.shape and full.provenance["model_evaluations"] == 6 * 3
    part = edit("instruct", image, model=pix2pix, prompt=PROMPT, steps=6, strength=0.5, seed=0)
    assert part.provenance["model_evaluations"] == 3 * 3
    weak = edit("instruct", image, model=pix2pix, prompt=PROMPT, steps=6, seed=0, text_guidance=1.0)
    assert weak.provenance["model_evaluations"] == 6  # no guidance: one conditional pass, as the pipeline


def test_an_instruction_model_with_an_unusable_scheduler_is_refused(tmp_path):
    import json

    tiny_pix2pix(tmp_path / "ip2p")
    config = tmp_path / "ip2p" / "scheduler" / "scheduler_config.json"
    values = json.loads(config.read_text())
    config.write_text(json.dumps({**values, "prediction_type": "v_prediction"}))
    with pytest.raises(ModelLoadError, match="epsilon-prediction models only"):
        load_model(tmp_path / "ip2p")
    config.write_text(json.dumps({**values, "_class_name": "NoSuchScheduler"}))
    with pytest.raises(ModelLoadError, match="has no NoSuchScheduler"):
        load_model(tmp_path / "ip2p")


# ---------------------------------------------------------------- instructions and templates


@pytest.mark.parametrize(
    "instruction",
    [
        Instruction(Change.add, Finding.effusion, Side.right, small=True),
        Instruction(Change.remove, Finding.effusion, Side.left),
        Instruction(Change.add, Finding.pneumothorax, Side.left),
        Instruction(Change.remove, Finding.opacity, Side.right),
        Instruction(Change.enlarge, Finding.effusion, Side.right),
        Instruction(Change.shrink, Finding.pneumothorax, Side.right),
        Instruction(Change.enlarge, Finding.cardiomegaly),
    ],
)
def test_instructions_read_back_as_written(instruction):
    text = instruction.text()
    assert read_instruction(text) == [instruction]


def test_instruction_texts():
    assert (
        write_instruction(Change.add, Finding.effusion, Side.right, small=True)
        == "add a small right pleural effusion"
    )
    assert write_instruction(Change.remove, Finding.effusion, Side.right) == PROMPT
    assert write_instruction(Change.enlarge, Finding.cardiomegaly) == "enlarge the heart"
    assert write_instruction(Change.add, Finding.pneumothorax, Side.left) == "add a left pneumothorax"
    assert read_instruction("make it look nicer") == []


@pytest.mark.parametrize(
    "finding,side",
    [
        ("effusion", "right"),
        ("effusion", "left"),
        ("pneumothorax", "right"),
        ("pneumothorax", "left"),
        ("opacity", "left"),
    ],
)
def test_templates_cover_the_phantoms_findings_on_their_side(finding, side):
    covered = []
    for seed in range(6):
        phantom = generate_cxr_phantom(128, seed, **{finding: side})
        template = region_template([Instruction(Change.add, Finding(finding), Side(side))], (128, 128))
        mask = phantom.masks[finding]
        covered.append((mask & template).sum() / mask.sum())
        other = hemithorax(phantom.masks["lungs"], Side("left" if side == "right" else "right"))
        assert (template & other).sum() < 0.1 * other.sum()  # the other side stays out
    assert np.mean(covered) > 0.9, covered


def test_cardiac_template_covers_the_enlarged_heart():
    for seed in range(4):
        phantom = generate_cxr_phantom(128, seed, cardiomegaly=True)
        template = region_template(read_instruction("enlarge the heart"), (128, 128))
        heart = phantom.masks["heart"]
        assert (heart & template).sum() > 0.85 * heart.sum()


def test_cli_writes_the_guidance_map_beside_the_result(tmp_path):
    import json

    from PIL import Image

    from napari_medit.cli import main

    tiny_pix2pix(tmp_path / "ip2p")
    image = chest()
    Image.fromarray(image).save(tmp_path / "prior.png")
    out = tmp_path / "out" / "edited.png"
    assert (
        main(
            [
                "edit",
                "instructx2x",
                "--image",
                str(tmp_path / "prior.png"),
                "--out",
                str(out),
                "--model",
                str(tmp_path / "ip2p"),
                "--prompt",
                PROMPT,
                "--steps",
                "3",
                "--threshold",
                "0.2",
            ]
        )
        == 0
    )
    guidance = np.asarray(Image.open(tmp_path / "out" / "edited_guidance.png"))
    record = json.loads((tmp_path / "out" / "edited.json").read_text())
    assert guidance.shape == image.shape and guidance.dtype == np.uint8 and guidance.max() > 0
    assert record["maps"] == {"guidance_map": str(tmp_path / "out" / "edited_guidance.png")}
    assert record["parameters"]["threshold"] == 0.2 and record["method"] == "instructx2x"
    edited = np.asarray(Image.open(out))
    outside = guidance == 0  # a map of zero is below any threshold: those pixels are the source's
    np.testing.assert_array_equal(edited[outside], image[outside])


# ---------------------------------------------------------------- measuring counterfactuals


def test_auroc_against_hand_counted_pairs():
    from napari_medit.metrics import auroc

    # positives 0.9, 0.4; negatives 0.1, 0.4, 0.8: pairs won 1 + 1 + 1 (0.9) and 1 + 0.5 + 0 (0.4) of 6
    assert auroc([1, 1, 0, 0, 0], [0.9, 0.4, 0.1, 0.4, 0.8]) == pytest.approx(4.5 / 6)
    assert auroc([0, 1], [0.2, 0.7]) == 1.0
    with pytest.raises(ValueError, match="both classes"):
        auroc([1, 1], [0.2, 0.3])


# BiomedJourney's Table 1: pathology AUC, race AUC, age Pearson correlation (x 100) and its CMIG score.
TABLE_1 = {
    "SD": (49.90, 77.13, 2.73, 18.14),
    "IP2P": (58.10, 78.25, 17.82, 42.12),
    "RoentGen": (79.61, 84.71, 28.91, 66.08),
    "BiomedJourney": (80.54, 97.22, 79.38, 83.23),
}


def test_cmig_score_is_the_geometric_mean_of_geometric_means():
    from napari_medit.metrics import cmig_score

    # by hand: sqrt(80.54 * sqrt(97.22 * 79.38)) = sqrt(80.54 * 87.8483) = 84.115
    ours = {
        name: cmig_score({"pathology_auc": a}, {"race_auc": r, "age_correlation": c})
        for name, (a, r, c, _) in TABLE_1.items()
    }
    assert ours["BiomedJourney"] == pytest.approx(84.115, abs=1e-3)
    assert cmig_score({"a": 4.0, "b": 9.0}, {"f": 6.0}) == pytest.approx(6.0)  # sqrt(sqrt(36) * 6)
    # The paper's scores come from per-condition values the table averages away, so the formula on the
    # table's columns lands within 9 points of them, and orders the four systems the same way.
    for name, (*_, published) in TABLE_1.items():
        assert abs(ours[name] - published) < 9, name
    assert sorted(ours, key=ours.get) == sorted(TABLE_1, key=lambda n: TABLE_1[n][3])
    with pytest.raises(ValueError, match="positive"):
        cmig_score({"a": 0.0}, {"f": 1.0})


def released_pseudo_masks(folder):
    """InstructX2X's inference/masks layout: pseudo_mask_<Finding>.npy, 512 x 512 floats in [0, 1]."""
    folder.mkdir()
    effusion = np.zeros((512, 512), np.float32)
    effusion[256:, :256] = 1  # the lower half of the image's left (the patient's right)
    heart = np.zeros((512, 512), np.float32)
    heart[200:400, 200:330] = 1
    np.save(folder / "pseudo_mask_Effusion.npy", effusion)
    np.save(folder / "pseudo_mask_Cardiomegaly.npy", heart)
    np.save(folder / "pseudo_mask_Lung Opacity.npy", np.ones((512, 512), np.float32))
    return effusion.astype(bool), heart.astype(bool)


def test_instructx2x_region_from_its_released_pseudo_masks(tmp_path, pix2pix):
    """The reference multiplies the relevance map by the union of the pseudo masks the instruction
    names (whole image when none): given the folder, napari-medit builds the same region on the image."""
    from napari_medit.instructions import pseudo_mask_region

    effusion, heart = released_pseudo_masks(tmp_path / "masks")
    region = pseudo_mask_region(tmp_path / "masks", "Remove the pleural EFFUSION", (64, 48))
    expected = np.zeros((64, 48), bool)
    expected[32:, :24] = True
    np.testing.assert_array_equal(region, expected)
    both = pseudo_mask_region(tmp_path / "masks", "effusion and cardiomegaly", (512, 512))
    np.testing.assert_array_equal(both, effusion | heart)
    assert pseudo_mask_region(tmp_path / "masks", "add a fracture", (8, 8)).all()

    image = chest()
    result = edit(
        "instructx2x",
        image,
        model=pix2pix,
        prompt=PROMPT,
        steps=2,
        seed=0,
        pseudo_masks=str(tmp_path / "masks"),
    )
    region = result.masks["roi_mask"]
    np.testing.assert_array_equal(region, pseudo_mask_region(tmp_path / "masks", PROMPT, image.shape))
    np.testing.assert_array_equal(result.image.array[~region], image[~region])
    assert result.provenance["parameters"]["pseudo_masks"] == str(tmp_path / "masks")


def test_a_category_named_without_a_pseudo_mask_file_edits_the_whole_image(tmp_path):
    """rse_x2x.py: an instruction naming one of its 31 categories that has no mask file (it ships 8)
    falls back to the whole image, whatever else it names; a word outside the list selects nothing."""
    from napari_medit.instructions import PSEUDO_MASK_CATEGORIES, pseudo_mask_region

    assert len(PSEUDO_MASK_CATEGORIES) == 31
    folder = tmp_path / "masks"
    effusion, _ = released_pseudo_masks(folder)
    edema = np.zeros((512, 512), np.float32)
    edema[100:300, 100:400] = 1
    np.save(folder / "pseudo_mask_Edema.npy", edema)
    assert pseudo_mask_region(folder, "edema and heart failure", (512, 512)).all()
    np.testing.assert_array_equal(pseudo_mask_region(folder, "worsening edema", (512, 512)), edema > 0)
    np.save(folder / "pseudo_mask_Flurbosis.npy", np.zeros((512, 512), np.float32))  # not a category
    assert pseudo_mask_region(folder, "flurbosis", (8, 8)).all()
    np.testing.assert_array_equal(pseudo_mask_region(folder, "effusion and flurbosis", (512, 512)), effusion)


def test_a_pseudo_mask_folder_that_is_not_one_fails_clearly(tmp_path, pix2pix):
    with pytest.raises(EditError, match=r"no pseudo_mask_.*npy files there"):
        edit(
            "instructx2x", chest(), model=pix2pix, prompt=PROMPT, steps=2, pseudo_masks=str(tmp_path / "none")
        )
    (tmp_path / "bad").mkdir()
    np.save(tmp_path / "bad" / "pseudo_mask_Effusion.npy", np.full((4, 4, 3), 7.0))
    with pytest.raises(EditError, match="one 2D array of values in"):
        edit(
            "instructx2x", chest(), model=pix2pix, prompt=PROMPT, steps=2, pseudo_masks=str(tmp_path / "bad")
        )
    (tmp_path / "pickled").mkdir()
    np.save(tmp_path / "pickled" / "pseudo_mask_Effusion.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(EditError, match="not a NumPy array file"):
        edit(
            "instructx2x",
            chest(),
            model=pix2pix,
            prompt=PROMPT,
            steps=2,
            pseudo_masks=str(tmp_path / "pickled"),
        )


def test_instructx2x_loads_its_converters_folder_as_written(tmp_path):
    """InstructX2X's converter writes diffusers' IP2P layout with PyTorch .bin weights (safe_serialization
    off by default) and a PNDM scheduler: it loads as is, read with the weights-only unpickler."""
    pipe = tiny_pix2pix(tmp_path / "reference", "PNDMScheduler")
    pipe.save_pretrained(tmp_path / "Ix2x_V1_4500", safe_serialization=False)
    # transformers 5 writes safetensors whatever it is told
    text_encoder = tmp_path / "Ix2x_V1_4500" / "text_encoder"
    if (text_encoder / "model.safetensors").exists():
        (text_encoder / "model.safetensors").unlink()
        torch.save(pipe.text_encoder.state_dict(), text_encoder / "pytorch_model.bin")
    written = {p.name for p in (tmp_path / "Ix2x_V1_4500").rglob("*") if p.suffix in (".bin", ".safetensors")}
    assert written == {"diffusion_pytorch_model.bin", "pytorch_model.bin"}
    model = load_model(tmp_path / "Ix2x_V1_4500")
    reference = load_model(tmp_path / "reference")
    image = chest(32)
    ours = edit("instructx2x", image, model=model, prompt=PROMPT, steps=3, seed=1)
    np.testing.assert_array_equal(
        ours.image.array,
        edit("instructx2x", image, model=reference, prompt=PROMPT, steps=3, seed=1).image.array,
    )
    assert ours.provenance["scheduler"]["built_from"] == "PNDMScheduler"


def test_a_bin_file_that_unpickles_to_code_is_refused(tmp_path):
    import pickle

    tiny_pix2pix(tmp_path / "ix2x").save_pretrained(tmp_path / "ix2x", safe_serialization=False)
    for stale in (tmp_path / "ix2x").rglob("*.safetensors"):
        stale.unlink()
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "ix2x" / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ModelLoadError, match=r"unet: could not load it .*tensors only"):
        load_model(tmp_path / "ix2x")
    assert not marker.exists()


SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


@pytest.mark.parametrize(
    "folder",
    [
        # a public InstructPix2Pix folder's: Euler ancestral, linspace spacing (999 ... 0)
        ("EulerAncestralDiscreteScheduler", {**SD_BETAS, "timestep_spacing": "linspace"}),
        # a folder that clips, spaces trailing and sets alpha to one
        (
            "DDIMScheduler",
            {**SD_BETAS, "clip_sample": True, "timestep_spacing": "trailing", "set_alpha_to_one": True},
        ),
    ],
)
def test_instructx2x_samples_on_sd_v1_4s_ddim_with_the_folders_betas(folder):
    """rse_x2x.py builds its DDIM from sd-v1-4's config whatever the folder ships: 100 steps run
    991, 981, ..., 1, unclipped, with alpha_bar of 'after t = 0' from t = 0; the betas are the model's."""
    import diffusers

    from napari_medit.editing.instructx2x import reference_ddim

    kind, config = folder
    theirs = getattr(diffusers, kind)(**config)
    ddim = reference_ddim(theirs)
    ddim.set_timesteps(100)
    assert [int(t) for t in ddim.timesteps[:2]] == [991, 981] and int(ddim.timesteps[-1]) == 1
    assert ddim.config.clip_sample is False and ddim.config.set_alpha_to_one is False
    assert float(ddim.final_alpha_cumprod) == float(theirs.alphas_cumprod[0])
    torch.testing.assert_close(ddim.alphas_cumprod, theirs.alphas_cumprod)
