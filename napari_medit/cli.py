"""The `napari-medit` command line.

    napari-medit sample {brain,cxr} --out DIR
    napari-medit info PATH [--json]
    napari-medit edit METHOD --image PATH --out PATH --model MODEL [masks] [parameters] [run options]
    napari-medit methods [--markdown]
    napari-medit batch MANIFEST.csv --out DIR [--workers N | --scheduler ADDRESS]

Errors in the input print one line naming the file and the problem and exit
with status 2; nothing is written then.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import sys

from . import catalogue
from ._version import __version__
from .catalogue import MASK_ROLES, METHODS, ComputeOptions, RunOptions
from .io import SUPPORTED, ImageReadError, read_image
from .io.formats import OUTPUT_ENDINGS, OutputFormat
from .metrics import EDITING_SCORE_THRESHOLD
from .stress.scenarios import ADDITION_RISE, REMOVAL_THRESHOLD, EditMethod, Scenario

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
DEMO_CASES = 12  # stress-test --demo without --n


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args, unknown = parser.parse_known_args(argv)
    # argparse has printed its message (or the help): an exit status, not an exception
    except SystemExit as exc:
        return int(exc.code or 0)
    if unknown:
        spec = getattr(args, "spec", None)
        where = (
            f"`napari-medit edit {spec.name} --help` lists what {spec.name} takes" if spec else "see --help"
        )
        print(f"napari-medit: error: unknown option {unknown[0]}; {where}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not getattr(args, "run", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return args.run(args)
    except KeyboardInterrupt:  # Ctrl-C: an edit under way was told to stop where it runs (compute)
        print("napari-medit: interrupted (an edit under way was stopped where it ran)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `napari-medit models | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    except (ImageReadError, ValueError, OSError) as exc:
        print(f"napari-medit: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-medit", description="Diffusion-based medical image editing."
    )
    parser.add_argument("--version", action="version", version=f"napari-medit {__version__}")
    commands = parser.add_subparsers(title="commands")
    # Where an edit's model runs and how it loads: one parent for every command that edits.
    compute = argparse.ArgumentParser(add_help=False)
    _add_fields(compute.add_argument_group("compute"), ComputeOptions)
    _add_file_commands(commands)
    _add_edit_command(commands, compute)
    _add_stress_command(commands, compute)
    _add_batch_command(commands, compute)
    _add_listing_commands(commands)
    _add_train_command(commands)
    return parser


def _add_file_commands(commands) -> None:
    sample = commands.add_parser("sample", help="write a bundled sample's files to a folder")
    sample.add_argument("name", choices=("brain", "cxr"))
    sample.add_argument("--out", required=True, help="folder to write into (created if missing)")
    sample.set_defaults(run=_sample)

    info = commands.add_parser("info", help="show what the reader sees in an image file or DICOM folder")
    info.add_argument("path")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(run=_info)


def _add_edit_command(commands, compute: argparse.ArgumentParser) -> None:
    edit = commands.add_parser(
        "edit",
        help="edit an image or volume (writes the result and a JSON provenance file)",
        description="Edit an image or volume; `napari-medit edit METHOD --help` lists "
        "the method's masks and parameters with their defaults.",
    )
    methods = edit.add_subparsers(title="methods", metavar="METHOD", dest="method")
    for spec in METHODS.values():
        _method_parser(methods, spec, compute)


def _add_stress_command(commands, compute: argparse.ArgumentParser) -> None:
    stress = commands.add_parser(
        "stress-test",
        parents=[compute],
        help="RadEdit's stress tests of a model: counterfactual test sets for acquisition, "
        "manifestation or population shift, filtered, and the model measured on them (report.json/html)",
    )
    stress.add_argument("scenario", choices=[s.value for s in Scenario])
    stress.add_argument(
        "--model-under-test",
        help="a TorchScript file or module:function returning a torch module "
        "(contract: napari_medit.stress.models)",
    )
    stress.add_argument(
        "--data", help="a cases CSV (id,image and the scenario's masks) or a folder with cases.csv"
    )
    stress.add_argument(
        "--editor", help="the diffusion model RadEdit edits with (default with --demo: demo-cxr)"
    )
    stress.add_argument("--out", required=True, help="output folder (a second run resumes its edits)")
    stress.add_argument(
        "--method",
        choices=[m.value for m in EditMethod],
        help="how the counterfactuals are made: radedit (the paper's; default) or instructx2x with "
        "an instruction model (population only: it adds the finding)",
    )
    stress.add_argument(
        "--n", type=int, help="only the first N cases (with --demo: N phantom cases, default 12)"
    )
    stress.add_argument(
        "--demo",
        action="store_true",
        help="phantom cases and a bundled model made to fail the way the paper's real one did",
    )
    stress.add_argument(
        "--filter-classifier",
        default="demo-cxr-findings",
        help="an independent findings classifier that decides which edits are kept",
    )
    stress.add_argument(
        "--filter-encoder",
        metavar="MODULE:FUNCTION",
        help="an image-text encoder (e.g. napari_medit.stress.biovil:biovil_t): filter with "
        "RadEdit's editing score instead of the classifier",
    )
    stress.add_argument(
        "--filter-threshold",
        type=float,
        default=None,
        help=f"a removal is kept below this probability of the finding (default "
        f"{REMOVAL_THRESHOLD}); an addition when it raised it by this much (default {ADDITION_RISE}); "
        f"with --filter-encoder, the lowest editing score kept (default {EDITING_SCORE_THRESHOLD})",
    )
    stress.add_argument(
        "--input-size", type=int, help="the model under test's input side, when it does not say"
    )
    stress.add_argument("--steps", type=int, help="RadEdit steps (default: the paper's 100)")
    stress.add_argument("--seed", type=int, default=0)
    stress.add_argument("--workers", type=int, help="LocalCluster worker processes (0: run here)")
    stress.set_defaults(run=_stress_test)


def _add_batch_command(commands, compute: argparse.ArgumentParser) -> None:
    from .batch import OPTIONAL_COLUMNS

    batch = commands.add_parser(
        "batch", parents=[compute], help="run the edits of a manifest (CSV) on a dask cluster; resumable"
    )
    batch.add_argument(
        "manifest",
        help="CSV: id,image,method and optionally "
        f"{','.join(OPTIONAL_COLUMNS)} (the `edit` options with underscores; "
        "a method's parameters on its own rows); paths relative to the manifest",
    )
    batch.add_argument(
        "--out", required=True, help="folder for ID.nii.gz/ID.png, ID.json and summary.csv/.json"
    )
    batch.add_argument("--model", help="the model for rows whose 'model' cell is empty")
    batch.add_argument(
        "--format",
        choices=[f.value for f in OutputFormat],
        help="write every result as this (dicom: ID.dcm for a DICOM file, a derived series in the "
        "folder ID for a series); default: the source's own kind (.png, .mgz, else .nii.gz)",
    )
    batch.add_argument(
        "--workers",
        type=int,
        help="LocalCluster worker processes (default: one per two cores; "
        "0: run here, one item after another)",
    )
    batch.set_defaults(run=_batch)


def _add_listing_commands(commands) -> None:
    listing = commands.add_parser("methods", help="list the editing methods, their masks and parameters")
    listing.add_argument("--markdown", action="store_true", help="as the README's Markdown table")
    listing.set_defaults(run=_methods)

    models = commands.add_parser("models", help="list the bundled and locally found models")
    models.add_argument("--json", action="store_true")
    models.set_defaults(run=_models)

    mededit_import = commands.add_parser(
        "import-mededit", help="turn an official MedEdit checkpoint into a model folder"
    )
    mededit_import.add_argument("checkpoint")
    mededit_import.add_argument("--out", required=True)
    mededit_import.add_argument("--num-head-channels", type=int, help="if your checkpoint differs from 256")
    mededit_import.add_argument("--resolution", type=int, default=128)
    mededit_import.set_defaults(run=_import_mededit)


def _add_train_command(commands) -> None:
    from .training import TRAINING_KINDS

    train = commands.add_parser(
        "train",
        help="train a model folder: "
        + "; ".join(f"{kind} ({says})" for kind, says in TRAINING_KINDS.items()),
    )
    train.add_argument("kind", choices=list(TRAINING_KINDS))
    train.add_argument("--out", required=True, help="the model folder to write (checkpoints go there too)")
    train.add_argument(
        "--data", help="brain: a folder of NIfTI volumes or a CSV (default: the bundled sample)"
    )
    train.add_argument("--steps", type=int, default=2000)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--resolution", type=int, default=64)
    train.add_argument("--learning-rate", type=float, default=2e-4)
    train.add_argument("--validate-every", type=int, default=500)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--ema-decay",
        type=float,
        default=0.0,
        help="keep an exponential moving average of the weights (e.g. 0.999) and save it; 0 = off",
    )
    train.add_argument(
        "--save-float16",
        action="store_true",
        help="diffusion models: store the weights in float16 (half the size; loaded as float32)",
    )
    train.add_argument(
        "--init-from",
        metavar="MODEL",
        help="cxr-instruct: start from this text-to-image model (e.g. demo-cxr), as InstructPix2Pix "
        "starts from Stable Diffusion (the prior's input channel starts at zero), or train an "
        "instruction model of the same shape on (e.g. demo-cxr-instruct)",
    )
    train.add_argument("--device", default="cpu")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    train.set_defaults(run=_train)


def _sample(args) -> int:
    from .sample_data import write_sample

    for path in write_sample(args.name, args.out):
        print(path)
    return 0


def _method_parser(methods, spec, compute: argparse.ArgumentParser) -> None:
    """`napari-medit edit METHOD`: the method's masks, parameters and the run options, from the catalogue."""
    parser = methods.add_parser(
        spec.name,
        parents=[compute],
        help=f"{spec.title} ({spec.reference})",
        description=f"{spec.title}: {spec.reference}.",
    )
    parser.add_argument("--image", required=True, help=f"the source: {SUPPORTED}")
    parser.add_argument(
        "--out",
        required=True,
        help=f"the result: a name ending in {', '.join(OUTPUT_ENDINGS)} (PNG and a single DICOM file: "
        "2D inputs only), or a folder with --format dicom; the provenance goes beside it as .json",
    )
    parser.add_argument(
        "--format",
        choices=[f.value for f in OutputFormat],
        help="dicom: a derived DICOM series in the folder --out (DICOM sources only); "
        "default: from the name of --out",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a DICOM output folder that holds files"
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a model folder, a name from `napari-medit models`, "
        "a preset (radedit) or a hub repository (hub:ORG/NAME)",
    )
    masks = parser.add_argument_group("masks (files on the image's grid)")
    for role in spec.masks:
        masks.add_argument(
            _option(role),
            dest=role,
            metavar="FILE",
            required=role in spec.required_masks,
            help=f"{MASK_ROLES[role].says}" + (" (required)" if role in spec.required_masks else ""),
        )
    group = parser.add_argument_group(f"{spec.title} parameters (default: the reference's)")
    if spec.presets:
        group.add_argument(
            "--preset",
            choices=list(spec.presets),
            help="; ".join(f"{name}: {preset.says}" for name, preset in spec.presets.items())
            + ". Options given explicitly still win",
        )
    _add_fields(group, spec.params)
    _add_fields(parser.add_argument_group("run options"), RunOptions)
    parser.set_defaults(run=_edit, spec=spec)


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_fields(group, params: type) -> None:
    """One option per dataclass field: typed and checked by the catalogue, default None (= the default rule);
    a flag for a yes/no field."""
    for item in catalogue.fields(params):
        kind = catalogue.value_type(params, item.name)
        if kind is bool:
            group.add_argument(
                _option(item.name), dest=item.name, action="store_true", help=item.metadata["source"]
            )
            continue
        extra = (
            {"choices": [m.value for m in kind]}
            if issubclass(kind, enum.Enum)
            else {"metavar": kind.__name__.upper()}
        )
        group.add_argument(
            _option(item.name),
            dest=item.name,
            type=_parse(params, item.name, kind),
            default=None,
            # argparse formats help with %
            help=f"{item.metadata['source']} (default: {catalogue.default_text(params, item)})".replace(
                "%", "%%"
            ),
            **extra,
        )


def _parse(params: type, name: str, kind: type):
    def parse(text: str):
        try:
            return catalogue.parse_value(params, name, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = kind.__name__  # argparse names the type in its message
    return parse


def edit_job(args):
    """The EditJob an `edit` command line asks for (checked, nothing read yet)."""
    from pathlib import Path

    from .jobs import EditJob

    spec = args.spec
    run = {
        item.name: value
        for item in catalogue.fields(RunOptions)
        if (value := getattr(args, item.name)) is not None
    }
    job = EditJob(
        method=spec.name,
        image=Path(args.image),
        out=Path(args.out),
        masks={role: Path(path) for role in spec.masks if (path := getattr(args, role)) is not None},
        parameters={
            item.name: value
            for item in catalogue.fields(spec.params)
            if (value := getattr(args, item.name)) is not None
        },
        run=RunOptions(**run),
        preset=getattr(args, "preset", None),
        format=OutputFormat(args.format) if args.format else None,
        overwrite=args.overwrite,
    )
    job.check()
    return job


def compute_options(args) -> ComputeOptions:
    """Where the command's edits run (--scheduler, else $NAPARI_MEDIT_SCHEDULER, else here: decided
    once, here) and how their model loads, as its options say."""
    return ComputeOptions(
        **{item.name: getattr(args, item.name) for item in catalogue.fields(ComputeOptions)}
    ).placed()


def _edit(args) -> int:
    from tqdm.auto import tqdm

    from .backends import ModelLoadError
    from .compute import ComputeError
    from .jobs import run_job
    from .results import EditError

    job = edit_job(args)
    read_image(job.image)  # a bad image fails before a model loads
    try:
        # off when not a terminal
        with tqdm(desc=f"napari-medit {job.method}", unit="step", disable=None) as bar:

            def show(progress):
                bar.total = progress.total
                bar.update(progress.step - bar.n)

            record = run_job(job, args.model, callback=show, compute=compute_options(args))
    except (EditError, ModelLoadError, ComputeError) as exc:
        raise ValueError(str(exc)) from None
    for path in [*record["outputs"], job.sidecar]:
        print(path)
    return 0


def _stress_test(args) -> int:
    from pathlib import Path

    from .stress.demo import DEMO_EDITORS, DEMO_MODELS, write_demo_cases
    from .stress.run import stress_test

    _check_workers(args)
    chosen = Scenario(args.scenario)
    model, data, editor = args.model_under_test, args.data, args.editor
    method = EditMethod(args.method) if args.method else None
    if args.demo:
        model = model or DEMO_MODELS[chosen]
        demo_method, demo_editor = DEMO_EDITORS[chosen]
        method, editor = method or demo_method, editor or demo_editor
        if data is None:
            data = write_demo_cases(chosen, args.n or DEMO_CASES, Path(args.out) / "data")
    missing = [
        flag
        for flag, value in (("--model-under-test", model), ("--data", data), ("--editor", editor))
        if value is None
    ]
    if missing:
        raise ValueError(
            f"stress-test {chosen.value} needs {', '.join(missing)} (or --demo for phantoms and "
            "bundled demo models)"
        )
    report = stress_test(
        chosen.value,
        model_under_test=model,
        data=data,
        editor=editor,
        out=args.out,
        method=method or EditMethod.radedit,
        n=args.n,
        workers=args.workers,
        scheduler=args.scheduler,
        filter_classifier=args.filter_classifier,
        filter_encoder=args.filter_encoder,
        filter_threshold=args.filter_threshold,
        input_size=args.input_size,
        seed=args.seed,
        steps=args.steps,
        device=args.device,
        download=args.download,
        trust_remote_code=args.trust_remote_code,
    )
    print(
        f"stress test {report['scenario']}: {report['n_generated']} edits generated, {report['n_kept']} kept "
        f"({report['filter']['keeps']}), {report['n_failed']} failed"
    )
    paired = report.get("original_of_kept", {})
    for measure in report["original"]:
        same = f" (the kept cases before: {paired[measure]:.4g})" if measure in paired else ""
        print(
            f"  {measure}: original {report['original'][measure]:.4g} -> edited "
            f"{report['edited'][measure]:.4g}{same}"
        )
    print(f"  report: {Path(args.out) / 'report.json'}, {Path(args.out) / 'report.html'}")
    return 0


def _check_workers(args) -> None:
    if args.workers is not None and args.scheduler:
        raise ValueError("give --workers (a cluster started here) or --scheduler (one running), not both")


def _batch(args) -> int:
    from .batch import run_batch

    _check_workers(args)
    summary = run_batch(
        args.manifest,
        args.out,
        model=args.model,
        workers=args.workers,
        scheduler=args.scheduler,
        device=args.device,
        download=args.download,
        trust_remote_code=args.trust_remote_code,
        output_format=OutputFormat(args.format) if args.format else None,
    )
    done, skipped, failed = (summary.count(s) for s in ("done", "skipped", "failed"))
    print(
        f"{done} edited, {skipped} already finished, {failed} failed; summary: {summary.out / 'summary.csv'}"
    )
    for record in summary.failed:
        print(f"  {record['id']}: {record['error']}", file=sys.stderr)
    return 1 if failed else 0


def _methods(args) -> int:
    if args.markdown:
        print(catalogue.markdown_table())
        return 0
    for spec in METHODS.values():
        masks = ", ".join([*spec.required_masks, *(f"[{m}]" for m in spec.optional_masks)]) or "no masks"
        print(f"{spec.name:<9} {spec.title}: {spec.reference}")
        print(f"{'':<9} masks: {masks}; text: {'yes' if spec.takes_text else 'no'}")
        for item in catalogue.fields(spec.params):
            print(
                f"{'':<9} {_option(item.name):<18} default {catalogue.default_text(spec.params, item)}: "
                f"{item.metadata['source']}"
            )
        for name, preset in spec.presets.items():
            print(f"{'':<9} --preset {name}: {preset.says}")
    return 0


def _models(args) -> int:
    from .backends import describe, describe_presets, model_folders

    described = [describe(folder) for folder in model_folders().values()] + describe_presets()
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    if not described:
        print("no models found")
    for model in described:
        conditioning = ["text"] * model["text_conditioned"] + model["mask_conditions"]
        print(
            f"{model['name']:<16} {model['backend']:<9} {model['resolution']}px  "
            f"conditioned on: {', '.join(conditioning) or 'nothing'}  methods: {', '.join(model['methods'])}"
        )
        if model.get("preset"):
            missing = [repo for repo, here in model["cached"].items() if not here]
            print(
                f"{'':<16} preset; "
                + (f"not in the local cache: {', '.join(missing)}" if missing else "cached")
            )
        else:
            print(f"{'':<16} {model['path']}")
    return 0


def _import_mededit(args) -> int:
    from .backends import ModelLoadError
    from .backends.mededit_checkpoint import import_mededit

    network = {"num_head_channels": args.num_head_channels} if args.num_head_channels else None
    try:
        print(import_mededit(args.checkpoint, args.out, network, args.resolution))
    except ModelLoadError as exc:
        raise ValueError(str(exc)) from None
    return 0


def _train(args) -> int:
    from pathlib import Path

    from .training.loop import TrainConfig

    if args.steps < 1 or args.batch_size < 1 or args.resolution < 16:
        raise ValueError("steps and batch size must be at least 1, resolution at least 16")
    if args.init_from and args.kind != "cxr-instruct":
        raise ValueError(
            f"--init-from starts an instruction model from a text-to-image one; "
            f"{args.kind} models train from scratch (drop --init-from)"
        )
    config = TrainConfig(
        out=Path(args.out),
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        device=args.device,
        validate_every=args.validate_every,
        ema_decay=args.ema_decay,
        save_float16=args.save_float16,
    )
    if args.kind == "brain":
        from .training.brain import train_brain

        folder = train_brain(config, args.data, args.resolution, args.resume)
    elif args.kind == "cxr-instruct":
        from .training.cxr_instruct import train_cxr_instruct

        folder = train_cxr_instruct(config, args.resolution, args.resume, args.init_from)
    elif args.kind.startswith("stress-"):
        from .training.stress import train_stress_model

        folder = train_stress_model(args.kind.removeprefix("stress-"), config, args.resolution, args.resume)
    elif args.kind == "cxr-findings":
        from .training.findings import train_findings

        folder = train_findings(config, args.resolution, args.resume)
    else:
        from .training.cxr import train_cxr

        folder = train_cxr(config, args.resolution, args.resume)
    print(folder)
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
