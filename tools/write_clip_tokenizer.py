"""Write CLIP's BPE tokenizer (vocab.json, merges.txt) for Stable Diffusion 1.x checkpoints, once.

The tokenizer every SD 1.x model uses is CLIP ViT-L/14's. Its merges ship with OpenAI's CLIP and with
open_clip (``open_clip/bpe_simple_vocab_16e6.txt.gz``); the vocabulary is built from them as CLIP builds
it: the 256 byte symbols, the same with the end-of-word mark, the first 48,894 merges, then the start and
end tokens (49,408 in all). napari-medit ships the two files it writes, so a ``.ckpt`` loads offline.

    pip download --no-deps open_clip_torch -d /tmp/oc && unzip -o /tmp/oc/open_clip_torch-*.whl \\
        'open_clip/bpe_simple_vocab_16e6.txt.gz' -d /tmp/oc
    python tools/write_clip_tokenizer.py /tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz \\
        napari_medit/backends/stable_diffusion_v1/tokenizer
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from transformers.convert_slow_tokenizer import bytes_to_unicode

MERGES = 49152 - 256 - 2  # CLIP's vocabulary size less the byte symbols and the two special tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bpe", type=Path, help="bpe_simple_vocab_16e6.txt.gz (open_clip or CLIP)")
    parser.add_argument("out", type=Path, help="the tokenizer folder to write")
    args = parser.parse_args()

    lines = gzip.decompress(args.bpe.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : MERGES + 1]  # the first line is a header
    symbols = list(bytes_to_unicode().values())
    vocabulary = symbols + [symbol + "</w>" for symbol in symbols]
    vocabulary += ["".join(merge.split()) for merge in merges] + ["<|startoftext|>", "<|endoftext|>"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vocab.json").write_text(
        json.dumps({token: i for i, token in enumerate(vocabulary)}, ensure_ascii=False)
    )
    (args.out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    print(f"{len(vocabulary)} tokens, {len(merges)} merges -> {args.out}")


if __name__ == "__main__":
    main()
