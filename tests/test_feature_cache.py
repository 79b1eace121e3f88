"""Feature reuse between steps (run option ``cache_interval``): a whole pass is the network's own
forward bit for bit; the kept features follow one edit's own sequence of calls and are refreshed at
every jump, inversion and new batch; voxels the method may not change stay exact."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import numpy as np
import pytest
import tiny_models
import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from monai.networks.nets import DiffusionModelUNet
from test_editing import CASE_MODELS, CASES, phantom_slice, run_case, volume_with_lesion

from napari_medit import catalogue
from napari_medit.editing import denoiser as denoiser_module
from napari_medit.editing import edit
from napari_medit.editing.feature_cache import FeatureCache, walk_of
from napari_medit.io import MedicalImage
from napari_medit.results import EditError


def _seeded(make):
    torch.manual_seed(0)
    return _live(make().eval())


def _live(network):
    """An untrained network with its zero-initialised layers (MONAI's output convolution) drawn at random,
    so that its output depends on its input and a reused feature shows."""
    with torch.no_grad():
        for weights in network.parameters():
            if not weights.any():
                weights.normal_(0, 0.05)
    return network


@pytest.fixture(autouse=True)
def live_monai(monkeypatch):
    def monai_unet():
        model = tiny_models.monai_unet()
        _live(model.model)
        return model

    monkeypatch.setitem(CASE_MODELS, "monai-unet", monai_unet)


# Every block layout the walk must take: the last up block plain, with self-attention, with cross-attention.
NETWORKS = {
    "diffusers UNet2DModel, attention last": lambda: UNet2DModel(
        sample_size=16,
        in_channels=2,
        out_channels=1,
        layers_per_block=2,
        block_out_channels=(8, 16),
        down_block_types=("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=4,
    ),
    "diffusers UNet2DConditionModel, cross-attention last": lambda: tiny_models.text_unet().unet,
    "MONAI DiffusionModelUNet, plain last": lambda: tiny_models.monai_unet().model,
    "MONAI DiffusionModelUNet, cross-attention last": lambda: DiffusionModelUNet(
        spatial_dims=2,
        in_channels=3,
        out_channels=1,
        channels=(8, 16),
        attention_levels=(True, False),
        num_res_blocks=2,
        num_head_channels=8,
        norm_num_groups=4,
        with_conditioning=True,
        cross_attention_dim=16,
    ),
    "MONAI DiffusionModelUNet, self-attention last": lambda: DiffusionModelUNet(
        spatial_dims=2,
        in_channels=3,
        out_channels=1,
        channels=(8, 16),
        attention_levels=(True, True),
        num_res_blocks=1,
        num_head_channels=8,
        norm_num_groups=4,
    ),
}


def _own_forward(network, x, timesteps, context):
    if isinstance(network, DiffusionModelUNet):
        return network(x, timesteps=timesteps, context=context)
    if isinstance(network, UNet2DConditionModel):
        return network(x, timesteps, encoder_hidden_states=context).sample
    return network(x, timesteps).sample


@pytest.mark.parametrize("kind", list(NETWORKS))
def test_a_whole_pass_is_the_networks_own_forward_bit_for_bit(kind):
    network = _seeded(NETWORKS[kind])
    walk = walk_of(network)
    channels = network.in_channels if isinstance(network, DiffusionModelUNet) else network.config.in_channels
    x = torch.randn(3, channels, 16, 16, generator=torch.Generator().manual_seed(1))
    timesteps = torch.full((3,), 421)
    cross = isinstance(network, UNet2DConditionModel) or getattr(network, "with_conditioning", False)
    context = torch.randn(3, 5, 16) if cross else None
    with torch.no_grad():
        own = _own_forward(network, x, timesteps, context)
        whole, kept = walk.whole(x, timesteps, context)
        again = walk.shallow(x, timesteps, kept, context)
    assert torch.equal(whole, own)
    assert torch.equal(again, own)  # the shallow branch on this very call's features is the pass itself
    assert kept.shape[-2:] == x.shape[-2:]  # the full-resolution features


def test_a_network_the_cache_cannot_cut_is_refused_before_the_edit():
    network = _seeded(
        lambda: UNet2DModel(
            sample_size=16,
            in_channels=1,
            out_channels=1,
            layers_per_block=1,
            block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=4,
            num_class_embeds=3,
        )
    )
    with pytest.raises(ValueError, match=r"class embedding.*cache_interval 1"):
        walk_of(network)
    model = tiny_models.pixel_unet()
    model.network = model.unet = network
    with pytest.raises(
        EditError, match="cannot reuse features of this UNet2DModel: it has a class embedding"
    ):
        edit("sdedit", phantom_slice(), model=model, steps=2, cache_interval=2)


def test_the_analytic_model_and_a_bad_interval_are_refused_in_one_message():
    from test_editing import MODELS

    with pytest.raises(EditError, match="has no network: use 1"):
        edit("sdedit", phantom_slice(), model=MODELS["analytic"](), steps=2, cache_interval=3)
    for bad in (0, 1.5, True):
        with pytest.raises(EditError, match="cache_interval must be a whole number of at least 1"):
            edit("sdedit", phantom_slice(), model=tiny_models.pixel_unet(), steps=2, cache_interval=bad)


class _Tagged:
    """Fake walk parts: a whole pass returns x and keeps a copy; a shallow pass returns what was kept."""

    def whole(self, x, timesteps, context=None):
        return x, x.clone()

    def shallow(self, x, timesteps, kept, context=None):
        return kept


def _decisions(cache, calls):
    """Per call (timestep, batch, stream): 'W' for a whole pass, 'S' for a reuse."""
    walk, out = _Tagged(), []
    for t, batch, stream in calls:
        before = cache.whole_passes
        with cache.stream(stream):
            cache(walk.whole, walk.shallow, torch.zeros(batch, 1, 2, 2), None, t)
        out.append("W" if cache.whole_passes > before else "S")
    return "".join(out)


def test_the_cache_refreshes_at_every_jump_repeat_new_shape_and_interval():
    # a run down, a RePaint jump back up, a repeat at one timestep, a new batch shape, the interval
    calls = [(900, 1, None), (800, 1, None), (700, 1, None), (800, 1, None), (700, 1, None), (700, 1, None)]
    calls += [(600, 1, None), (500, 2, None), (400, 2, None), (300, 2, None), (200, 2, None), (100, 2, None)]
    assert _decisions(FeatureCache(4), calls) == "WSSWSWSWSSSW"
    assert _decisions(FeatureCache(1), calls) == "W" * len(calls)
    # An inversion walks up: every call computes everything.
    assert _decisions(FeatureCache(10), [(t, 1, None) for t in (100, 200, 300, 400)]) == "WWWW"


def test_each_stream_reuses_its_own_features():
    """Two batches at each timestep (through-plane smoothing's pieces): each reuses its own features."""
    cache, walk = FeatureCache(3), _Tagged()
    outputs = {}
    for t in (900, 800, 700):
        for piece, value in (("a", 1.0), ("b", 2.0)):
            with cache.stream(piece):
                x = torch.full((1, 1, 2, 2), value + t)
                outputs[(t, piece)] = cache(walk.whole, walk.shallow, x, None, t)
    assert cache.whole_passes == 2 and cache.shallow_passes == 4
    for t in (800, 700):
        assert torch.equal(outputs[(t, "a")], outputs[(900, "a")])
        assert torch.equal(outputs[(t, "b")], outputs[(900, "b")])


class _Recording(FeatureCache):
    """A feature cache that logs (timestep, whole?) for every call of the edit it serves."""

    log: ClassVar[list[tuple[float, bool]]] = []

    def __call__(self, walk_whole, walk_shallow, x, timesteps, timestep, context=None):
        before = self.whole_passes
        out = super().__call__(walk_whole, walk_shallow, x, timesteps, timestep, context)
        type(self).log.append((timestep, self.whole_passes > before))
        return out


@pytest.fixture
def recorded(monkeypatch):
    _Recording.log = []
    monkeypatch.setattr(denoiser_module, "FeatureCache", _Recording)
    return _Recording.log


@pytest.mark.parametrize(
    "method, options",
    [
        ("repaint", {"steps": 20, "jump_length": 3, "jump_n_sample": 3}),
        ("mededit", {"steps": 12, "jump_n_sample": 3}),
        ("pie", {"iterations": 3, "steps": 12}),
        ("radedit", {"steps": 12, "skip": 2}),
        ("diffedit", {"steps": 12}),
    ],
)
def test_every_call_after_a_jump_or_on_the_way_up_computes_the_whole_network(method, options, recorded):
    """RePaint's and MedEdit's jumps, PIE's iterations, RadEdit's inversion against its edit pass and
    DiffEdit's inversion: a call that does not continue down from the previous one never reuses."""
    result = run_case(method, cache_interval=50, **options)
    assert result.provenance["feature_cache"]["shallow_passes"] > 0
    for (t_before, _), (t, whole) in itertools.pairwise(recorded):
        if t >= t_before:
            assert whole, f"{method}: the call at t={t} after t={t_before} reused kept features"
    # With an interval longer than the run, only those calls (and the first) compute everything.
    jumps = sum(1 for (a, _), (b, _) in itertools.pairwise(recorded) if b >= a)
    assert sum(whole for _, whole in recorded) == 1 + jumps


@pytest.mark.parametrize("method", ["mededit", "repaint", "pie", "diffedit", "instructx2x"])
def test_outside_voxels_stay_exact_and_the_edit_inside_changes(method):
    exact = run_case(method, steps=12)
    cached = run_case(method, steps=12, cache_interval=3)
    source = phantom_slice()
    editable = catalogue.method(method).editable(cached.masks)
    assert editable is not None and 0 < editable.sum() < editable.size
    np.testing.assert_array_equal(cached.image.array[~editable], source[~editable])
    np.testing.assert_array_equal(exact.image.array[~editable], source[~editable])
    assert not np.array_equal(cached.image.array, exact.image.array)  # it did reuse something
    passes = cached.provenance["feature_cache"]
    assert passes["interval"] == 3 and passes["shallow_passes"] > 0 and passes["whole_passes"] > 0


def test_radedit_keep_mask_voxels_are_bit_identical_with_the_cache():
    source = phantom_slice()
    keep = np.zeros(source.shape, bool)
    keep[:, :5] = True
    result = run_case("radedit", steps=12, cache_interval=4, keep_mask=keep, edit_mask=~keep)
    np.testing.assert_array_equal(result.image.array[keep], source[keep])
    assert not np.array_equal(result.image.array[~keep], source[~keep])


def test_interval_one_is_the_exact_network():
    default, one = run_case("mededit", steps=6), run_case("mededit", steps=6, cache_interval=1)
    np.testing.assert_array_equal(one.image.array, default.image.array)
    assert one.provenance["feature_cache"] is None and one.provenance["cache_interval"] == 1


def test_through_plane_pieces_and_concurrent_edits_keep_their_own_features():
    """Smoothing runs all slices in one batch, the network two at a time: each piece is its own stream.
    The same edits in threads on one shared model give the same results: the cache is each edit's."""
    volume, brain, lesion = volume_with_lesion((16, 16, 4))
    lesion[4:10, 5:11, :] = True
    image = MedicalImage(volume, np.eye(4))
    model = tiny_models.monai_unet()
    _live(model.model)

    def run(seed, interval):
        return edit(
            "mededit",
            image,
            model=model,
            axis=2,
            seed=seed,
            steps=9,
            pathology_mask=lesion,
            brain_mask=brain,
            through_plane_smoothing=0.5,
            batch_size=2,
            cache_interval=interval,
        )

    alone = [run(seed, 3) for seed in (1, 2)]
    for result in alone:
        # 4 slices in 2 pieces, 9 steps, refreshed every third: each piece 3 whole and 6 shallow passes
        assert result.provenance["feature_cache"] == {"interval": 3, "whole_passes": 12, "shallow_passes": 24}
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda seed: run(seed, 3), (1, 2)))
    for one, other in zip(alone, together, strict=True):
        np.testing.assert_array_equal(other.image.array, one.image.array)


def test_compiled_and_cached_equals_cached(monkeypatch):
    model = tiny_models.text_unet()
    model.compile_backend = "eager"  # dynamo traces the walk's two parts; no C++ compiler needed
    cached = run_case("radedit", steps=8, cache_interval=2)
    image = phantom_slice()
    region = np.zeros(image.shape, bool)
    region[4:10, 5:11] = True
    options = {k: v for k, v in CASES["radedit"].items() if k not in ("model", "edit_mask")}
    both = edit(
        "radedit",
        image,
        model=model,
        **{**options, "steps": 8},
        edit_mask=region,
        cache_interval=2,
        compile_network=True,
    )
    np.testing.assert_allclose(both.image.array, cached.image.array, atol=1e-3)
    assert {name for name, _ in model._compiled} == {"whole", "shallow"}
