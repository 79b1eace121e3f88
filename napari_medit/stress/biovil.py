"""BioViL-T (Bannur et al., CVPR 2023) as the stress test's image-text encoder, through Microsoft's own
``hi-ml-multimodal`` package: RadEdit's editing-score filter (Sec. 4.4) as the paper ran it.

    napari-medit stress-test SCENARIO ... --filter-encoder napari_medit.stress.biovil:biovil_t

Needs ``pip install hi-ml-multimodal`` (it brings timm; torchvision must be built for the installed
torch) and microsoft/BiomedVLP-BioViL-T in the local Hugging Face cache. The models load with the
hub offline and never with remote code: hi-ml-multimodal ships CXR-BERT's model code itself.
Images are prepared as its ``load_image`` prepares a file (rescaled to uint8, grey).
"""

from __future__ import annotations

from collections.abc import Sequence
from unittest import mock

import numpy as np

from .models import ModelUnderTestError

REPOSITORY = "microsoft/BiomedVLP-BioViL-T"


def biovil_t() -> BioViLT:
    """BioViL-T's image and text encoders from the local cache; one clear message when they cannot load."""
    try:
        from health_multimodal.image.data.io import remap_to_uint8
        from health_multimodal.image.utils import ImageModelType, get_image_inference
        from health_multimodal.text.utils import BertEncoderType, get_bert_inference
    # ImportError, or a torchvision built for another torch ("operator ... does not exist")
    except Exception as exc:  # noqa: BLE001
        raise ModelUnderTestError(
            f"BioViL-T needs Microsoft's hi-ml-multimodal package with a torchvision built for this torch "
            f"(pip install hi-ml-multimodal); importing it failed: {str(exc).splitlines()[0]}"
        ) from None
    from huggingface_hub import constants, snapshot_download

    try:
        snapshot_download(REPOSITORY, local_files_only=True)
    except Exception:  # noqa: BLE001 - LocalEntryNotFoundError and its relatives
        raise ModelUnderTestError(
            f"BioViL-T's weights ({REPOSITORY}) are not in the local Hugging Face cache; fetch them once "
            f"where "
            f"the hub is reachable: huggingface-cli download {REPOSITORY}"
        ) from None
    with mock.patch.object(constants, "HF_HUB_OFFLINE", True):  # hi-ml-multimodal calls the hub itself
        text = get_bert_inference(BertEncoderType.BIOVIL_T_BERT)
        image = get_image_inference(ImageModelType.BIOVIL_T)
    return BioViLT(text, image, remap_to_uint8)


class BioViLT:
    """``metrics.ImageTextEncoder`` over hi-ml-multimodal's inference engines: L2-normalised joint
    embeddings."""

    def __init__(self, text_engine, image_engine, remap_to_uint8):
        self.text_engine, self.image_engine, self.remap_to_uint8 = text_engine, image_engine, remap_to_uint8

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        embeddings = self.text_engine.get_embeddings_from_prompt(list(texts), normalize=True, verbose=False)
        return embeddings.detach().cpu().numpy()

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import torch
        from PIL import Image

        engine = self.image_engine
        out = []
        for image in images:
            grey = Image.fromarray(self.remap_to_uint8(np.asarray(image, np.float64))).convert("L")
            batch = engine.transform(grey).unsqueeze(0).to(next(engine.model.parameters()).device)
            with torch.no_grad():
                embedding = engine.model.forward(batch).projected_global_embedding
            out.append(torch.nn.functional.normalize(embedding, dim=-1)[0].cpu().numpy())
        return np.stack(out)
