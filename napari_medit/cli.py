"""The `napari-medit` command line.

    napari-medit sample {brain,cxr} --out DIR
    napari-medit info PATH [--json]

Errors in the input print one line naming the file and the problem and exit
with status 2; nothing is written then.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .io import ImageReadError, read_image

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return args.run(args)
    except (ImageReadError, ValueError, OSError) as exc:
        print(f"napari-medit: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-medit", description="Diffusion-based medical image editing.")
    parser.add_argument("--version", action="version", version=f"napari-medit {__version__}")
    commands = parser.add_subparsers(title="commands")

    sample = commands.add_parser("sample", help="write a bundled sample's files to a folder")
    sample.add_argument("name", choices=("brain", "cxr"))
    sample.add_argument("--out", required=True, help="folder to write into (created if missing)")
    sample.set_defaults(run=_sample)

    info = commands.add_parser("info", help="show what the reader sees in an image file or DICOM folder")
    info.add_argument("path")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(run=_info)
    return parser


def _sample(args) -> int:
    from .sample_data import write_sample

    for path in write_sample(args.name, args.out):
        print(path)
    return 0


def _info(args) -> int:
    summary = read_image(args.path).summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    affine = summary.pop("affine")
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f"{key:<{width}}  {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    print("affine (voxel -> RAS+ mm):")
    for row in affine:
        print("  " + "  ".join(f"{v:10.4f}" for v in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
