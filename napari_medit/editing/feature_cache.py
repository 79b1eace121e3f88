"""Feature reuse between denoising steps: DeepCache (Ma, Fang & Wang, CVPR 2024) for our UNets.

A UNet's deep branch, everything below its full-resolution skip connection, changes little from one
step of a run to the next; the shallow branch carries the detail. So every ``interval``-th call
computes the whole network and keeps the features entering its last layer (the final up block's
last resnet, with its attention where it has one), and the calls in between compute only the input
convolution, that layer and the output head on the kept features: the paper's shallowest branch.
On our UNets that is about a fifth of a forward pass (benchmarks/speed.py measures it).

The cache belongs to one edit (``Denoiser.for_edit``), never to the shared model, and follows that
edit's own sequence of calls. A call reuses the kept features only when it continues the previous
call of its stream: the same shapes and a lower timestep, fewer than ``interval`` calls after the
last whole one. Anything else computes the whole network and keeps its features anew: a jump back up
(RePaint's and MedEdit's resampling), an inversion walking up the timesteps, a repeat at the same
timestep, a new PIE iteration or batch of slices (they start again from a higher timestep), a new
batch shape (a guided batch after an unguided one). A caller that interleaves several batches at one
timestep names each one's stream (``FeatureCache.stream``), as through-plane smoothing does.

Supported: diffusers' ``UNet2DModel`` and ``UNet2DConditionModel`` and MONAI's
``DiffusionModelUNet`` in the forms our methods run (no class or added embeddings, no ControlNet
residuals). ``UNetWalk.whole`` is their forward, step for step, so a call that computes everything
gives what the network itself gives; tests/test_feature_cache.py checks it bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable
from dataclasses import dataclass

import torch


class UNetWalk:
    """A UNet's forward pass in two parts, where the cache cuts it. Subclasses say how one library
    calls its blocks; the order of the pass is here, once."""

    def __init__(self, network: torch.nn.Module):
        self.network = network
        self.final = network.up_blocks[-1]
        if getattr(self.final, "upsamplers", None) or getattr(self.final, "upsampler", None):
            raise ValueError("its last up block upsamples, so it has no full-resolution layer to keep")

    # How a library's UNet is called, part by part.
    def embed(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def down(self, block, h, emb, context) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        raise NotImplementedError

    def middle(self, h, emb, context) -> torch.Tensor:
        raise NotImplementedError

    def up(self, block, h, skips: tuple[torch.Tensor, ...], emb, context) -> torch.Tensor:
        raise NotImplementedError

    def attend(self, attention, h, context) -> torch.Tensor:
        raise NotImplementedError

    def head(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def conv_in(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.conv_in(x)

    # The pass itself.
    def layer(self, index: int, h, skip, emb, context) -> torch.Tensor:
        """One layer of the final up block: its resnet on the features and a skip, then its attention."""
        h = self.final.resnets[index](torch.cat([h, skip], dim=1), emb)
        attentions = getattr(self.final, "attentions", None)
        return h if attentions is None else self.attend(attentions[index], h, context)

    def whole(self, x, timesteps, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's output, and the features entering its last layer (what the cache keeps)."""
        emb = self.embed(x, timesteps)
        h = self.conv_in(x)
        skips = [h]
        for block in self.network.down_blocks:
            h, res = self.down(block, h, emb, context)
            skips += res
        h = self.middle(h, emb, context)
        for block in self.network.up_blocks[:-1]:
            count = len(block.resnets)
            h = self.up(block, h, tuple(skips[-count:]), emb, context)
            del skips[-count:]
        last = len(self.final.resnets) - 1
        for index in range(last):
            h = self.layer(index, h, skips.pop(), emb, context)
        (first,) = skips  # the input convolution's output, the last layer's skip
        return self.head(self.layer(last, h, first, emb, context)), h

    def shallow(self, x, timesteps, kept: torch.Tensor, context=None) -> torch.Tensor:
        """The output from the kept deep features: the input convolution, the last layer, the head."""
        emb = self.embed(x, timesteps)
        last = len(self.final.resnets) - 1
        return self.head(self.layer(last, kept, self.conv_in(x), emb, context))


class DiffusersWalk(UNetWalk):
    """diffusers ``UNet2DModel`` (pixel space) and ``UNet2DConditionModel`` (cross-attention)."""

    def __init__(self, network):
        super().__init__(network)
        config = network.config
        unsupported = {
            "a class embedding": getattr(network, "class_embedding", None) is not None,
            "added embeddings": getattr(config, "addition_embed_type", None) is not None,
            "an encoder projection": getattr(network, "encoder_hid_proj", None) is not None,
            "Fourier time embedding": getattr(config, "time_embedding_type", "positional") != "positional",
            "skip-connection blocks": any(hasattr(b, "skip_conv") for b in network.down_blocks),
            "FreeU on its last block": bool(getattr(self.final, "s1", None)),
        }
        found = [what for what, present in unsupported.items() if present]
        if found:
            raise ValueError(f"it has {', '.join(found)}")
        self.cross = hasattr(network, "get_time_embed")  # UNet2DConditionModel
        self.factor = 2 ** sum(1 for b in network.up_blocks if getattr(b, "upsamplers", None))

    def embed(self, x, timesteps):
        net = self.network
        if self.cross:
            emb = net.time_embedding(net.get_time_embed(sample=x, timestep=timesteps), None)
            return emb if net.time_embed_act is None else net.time_embed_act(emb)
        return net.time_embedding(net.time_proj(timesteps).to(dtype=net.dtype))

    def conv_in(self, x):
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"its input size {tuple(x.shape[-2:])} is not a multiple of {self.factor}")
        if getattr(self.network.config, "center_input_sample", False):
            x = 2 * x - 1.0
        return self.network.conv_in(x)

    def _attending(self, block) -> bool:
        return getattr(block, "has_cross_attention", False)

    def down(self, block, h, emb, context):
        if self._attending(block):
            return block(hidden_states=h, temb=emb, encoder_hidden_states=context)
        return block(hidden_states=h, temb=emb)

    def middle(self, h, emb, context):
        block = self.network.mid_block
        if block is None:
            return h
        if self._attending(block):
            return block(h, emb, encoder_hidden_states=context)
        return block(h, emb)

    def up(self, block, h, skips, emb, context):
        if self._attending(block):
            return block(
                hidden_states=h, temb=emb, res_hidden_states_tuple=skips, encoder_hidden_states=context
            )
        return block(h, skips, emb)

    def attend(self, attention, h, context):
        if self._attending(self.final):
            return attention(h, encoder_hidden_states=context, return_dict=False)[0]
        return attention(h)

    def head(self, h):
        net = self.network
        if net.conv_norm_out is not None:
            h = net.conv_act(net.conv_norm_out(h))
        return net.conv_out(h)


class MonaiWalk(UNetWalk):
    """MONAI ``DiffusionModelUNet``."""

    def __init__(self, network):
        super().__init__(network)
        if network.num_class_embeds is not None:
            raise ValueError("it has a class embedding")

    def embed(self, x, timesteps):
        from monai.networks.nets.diffusion_model_unet import get_timestep_embedding

        net = self.network
        return net.time_embed(get_timestep_embedding(timesteps, net.block_out_channels[0]).to(dtype=x.dtype))

    def down(self, block, h, emb, context):
        return block(hidden_states=h, temb=emb, context=context)

    def middle(self, h, emb, context):
        return self.network.middle_block(hidden_states=h, temb=emb, context=context)

    def up(self, block, h, skips, emb, context):
        return block(hidden_states=h, res_hidden_states_list=list(skips), temb=emb, context=context)

    def attend(self, attention, h, context):
        if type(self.final).__name__ == "CrossAttnUpBlock":
            return attention(h, context=context).contiguous()
        return attention(h).contiguous()

    def head(self, h):
        return self.network.out(h)


def walk_of(network: torch.nn.Module) -> UNetWalk:
    """The walk for ``network``; ValueError naming what it lacks when the cache cannot cut it."""
    name = type(network).__name__
    try:
        if name in ("UNet2DModel", "UNet2DConditionModel"):
            return DiffusersWalk(network)
        if name == "DiffusionModelUNet":
            return MonaiWalk(network)
        raise ValueError(
            "it is not one of diffusers' UNet2DModel, UNet2DConditionModel or MONAI's DiffusionModelUNet"
        )
    except ValueError as exc:
        raise ValueError(
            f"cache_interval cannot reuse features of this {name}: {exc}; run with cache_interval 1"
        ) from None


@dataclass
class _Kept:
    timestep: float
    shapes: Hashable
    features: torch.Tensor
    reused: int = 0  # calls that reused them so far


class FeatureCache:
    """One edit's kept features, per stream (module docstring); counts whole and shallow passes."""

    def __init__(self, interval: int):
        if interval < 1:
            raise ValueError(f"cache_interval must be at least 1, got {interval}")
        self.interval = interval
        self.whole_passes = 0
        self.shallow_passes = 0
        self._kept: dict[Hashable, _Kept] = {}
        self._stream: Hashable = None

    @contextlib.contextmanager
    def stream(self, name: Hashable):
        """Calls inside are one stream of their own (a caller's batch among several at one timestep)."""
        before, self._stream = self._stream, name
        try:
            yield
        finally:
            self._stream = before

    def continues(self, timestep: float, shapes: Hashable) -> bool:
        """Whether a call at ``timestep`` with ``shapes`` may reuse its stream's kept features."""
        kept = self._kept.get(self._stream)
        return (
            kept is not None
            and kept.shapes == shapes
            and timestep < kept.timestep
            and kept.reused + 1 < self.interval
        )

    def __call__(self, walk_whole, walk_shallow, x, timesteps, timestep: float, context=None) -> torch.Tensor:
        """The network's output at ``x``: from the kept features when the call continues its stream,
        else from a whole pass whose features are kept."""
        shapes = (tuple(x.shape), x.dtype, None if context is None else tuple(context.shape))
        if self.continues(timestep, shapes):
            kept = self._kept[self._stream]
            kept.timestep, kept.reused = timestep, kept.reused + 1
            self.shallow_passes += x.shape[0]
            return walk_shallow(x, timesteps, kept.features, context)
        out, features = walk_whole(x, timesteps, context)
        self._kept[self._stream] = _Kept(timestep, shapes, features)
        self.whole_passes += x.shape[0]
        return out

    def describe(self) -> dict:
        """For provenance: the interval and how the passes split."""
        return {
            "interval": self.interval,
            "whole_passes": self.whole_passes,
            "shallow_passes": self.shallow_passes,
        }
