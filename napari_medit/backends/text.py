"""Text encoders: a transformers tokenizer + model pair, read from local folders.

Stable Diffusion-style folders keep them in ``tokenizer/`` and ``text_encoder/``;
so do napari-medit's own text-conditioned models. The encoder's last hidden
state is what a UNet's cross-attention reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


class TransformersTextEncoder:
    def __init__(self, tokenizer, model, max_length: int, use_attention_mask: bool = False):
        self.tokenizer, self.model = tokenizer, model.eval()
        self.max_length, self.use_attention_mask = max_length, use_attention_mask

    @classmethod
    def from_folder(
        cls,
        folder: Path,
        max_length: int | None = None,
        use_attention_mask: bool | None = None,
        trust_remote_code: bool = False,
        safetensors_only: bool = True,
    ) -> TransformersTextEncoder:
        """``use_attention_mask`` None: as the encoder's config says, the rule of diffusers' pipelines
        (BERT-type encoders saved with ``use_attention_mask: true`` get the mask; CLIP's config has
        no such field and is run without one, as it was trained). ``safetensors_only`` False also
        reads a published folder's pytorch_model.bin, through transformers' weights-only unpickler."""
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            folder / "tokenizer", local_files_only=True, trust_remote_code=trust_remote_code
        )
        model = AutoModel.from_pretrained(
            folder / "text_encoder",
            local_files_only=True,
            trust_remote_code=trust_remote_code,
            use_safetensors=True if safetensors_only else None,
        )
        if use_attention_mask is None:
            use_attention_mask = bool(getattr(model.config, "use_attention_mask", False))
        return cls(tokenizer, model, max_length or tokenizer.model_max_length, use_attention_mask)

    def save(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(folder / "tokenizer")
        self.model.save_pretrained(folder / "text_encoder", safe_serialization=True)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokens(self, prompts: Sequence[str]):
        return self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        ).to(self.device)

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokens(prompts)
        mask = tokens.attention_mask if self.use_attention_mask else None
        return self.model(tokens.input_ids, attention_mask=mask)[0]
