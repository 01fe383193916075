"""``dicomnode train {segmentation,classifier,locator,lesion-pattern,cxr} --data SPEC --out BUNDLE_DIR``.

Parses the command line into ``pipeline.training.TrainSettings`` and runs it;
``lesion-pattern`` fits the lesion pattern model on the lesion maps of the U-Net already
in BUNDLE_DIR (pipeline.training.pattern); ``cxr`` trains the CXR classifier of the
localizer (pipeline.training.cxr, ``--classes``, default the paper's covid19,cap) and adds
it to BUNDLE_DIR without touching the CT's networks or figures. A bad
data spec, bad option or unusable checkpoint ends with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ._args import EXIT_USAGE, add_progress_flags

if TYPE_CHECKING:
    from pipeline.training.params import TrainParams

log = logging.getLogger(__name__)

#: ``--backbone`` presets: (block, layers, widths). resnet152 is the paper's layout.
BACKBONES: dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]] = {
    "resnet152": ("bottleneck", (3, 8, 36, 3), (64, 128, 256, 512)),
    "resnet50": ("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512)),
    "resnet18": ("basic", (2, 2, 2, 2), (64, 128, 256, 512)),
    "tiny": ("basic", (1, 1, 1, 1), (16, 32, 64, 128)),
}
DEFAULT_UNET_FEATURES = (8, 16, 32, 64, 64, 8)


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,1,1,1, got {text!r}") from e
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``train`` options, in the order ``--help`` lists them."""
    _add_data_arguments(p)
    _add_architecture_arguments(p)
    _add_training_arguments(p)
    _add_card_arguments(p)


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    """The role to train, the data it is trained on and the bundle it goes to."""
    p.add_argument(
        "role",
        choices=("segmentation", "classifier", "locator", "lesion-pattern", "cxr"),
        help="which network of the chain to train; lesion-pattern: the pneumonia-type model on the "
        "lesion maps of the bundle's U-Net (train the segmentation first); cxr: the classifier of the CT "
        "localizer read as a chest x-ray (its classes: --classes)",
    )
    p.add_argument(
        "--classes",
        default=None,
        metavar="C1,C2[,...]",
        help="cxr: the CXR model's classes, in output order (default covid19,cap: the paper's COVID-19 vs CAP)",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="SPEC",
        action="append",
        help="training data: 'phantom:count=N,seed=S[,...]', a manifest CSV, a MosMedData or "
        "CC-CCII folder (see pipeline.datasets); repeat to train on several together",
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="BUNDLE_DIR",
        help="bundle folder to create or update (other roles in it are kept)",
    )


def _add_architecture_arguments(p: argparse.ArgumentParser) -> None:
    """The network layout: ResNet options (classifier, locator) and U-Net options (segmentation)."""
    arch = p.add_argument_group("architecture (classifier and locator)")
    arch.add_argument(
        "--backbone",
        choices=sorted(BACKBONES),
        default=None,
        help="ResNet preset (resnet152 = the paper's [3,8,36,3] bottleneck); default tiny",
    )
    arch.add_argument("--layers", type=_ints, default=None, help="blocks per stage, e.g. 1,1,1,1")
    arch.add_argument("--block", choices=("basic", "bottleneck"), default=None)
    arch.add_argument("--widths", type=_ints, default=None, help="stage widths, e.g. 16,32,64,128")
    unet = p.add_argument_group("architecture (segmentation)")
    unet.add_argument(
        "--features",
        type=_ints,
        default=None,
        help=f"U-Net features (6 values), default {','.join(map(str, DEFAULT_UNET_FEATURES))}",
    )
    unet.add_argument(
        "--lesion-weight",
        type=float,
        default=None,
        metavar="W",
        help="loss weight of lesion pixels (dense disease must stay lung; default 5)",
    )
    unet.add_argument(
        "--paint-consolidation",
        type=float,
        default=None,
        metavar="P",
        help="probability that a training slice gets consolidation painted into one lung "
        "(pipeline.training.paint; default 0: not in the shipped recipe, see the model card)",
    )
    unet.add_argument(
        "--paint-as-lesion",
        action="store_true",
        help="painted pixels are labelled lesion (default: they stay lung)",
    )
    unet.add_argument(
        "--no-lesion-head",
        dest="lesion_head",
        action="store_false",
        default=True,
        help="a 2-class U-Net (background, lung); default: 3 classes, the third the lesions of "
        "infection, learnt from the data's lesion masks (the chain's lesion evidence)",
    )


def _add_training_arguments(p: argparse.ArgumentParser) -> None:
    """How the training runs: input size, schedule, device, data preparation."""
    p.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="network input size in pixels (default: the chain's, 224 for ResNets, 128 for the U-Net)",
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (cosine decay over the epochs)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from BUNDLE_DIR/checkpoints/<role>/last.pt (same settings required)",
    )
    p.add_argument("--val-fraction", type=float, default=0.2, help="patients held out for validation")
    p.add_argument("--workers", type=int, default=0, help="processes preparing cases (0: in this process)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's choice; 1 is often faster on a busy machine)",
    )
    p.add_argument(
        "--max-slices-per-case",
        type=int,
        default=None,
        help="at most this many slices per case, uniform stride (default: all eligible)",
    )
    p.add_argument(
        "--lung-masks",
        choices=("chain", "dataset", "classical"),
        default="chain",
        help="lung masks that cut the classifier/locator inputs: 'chain' (default) = what "
        "inference computes (the U-Net already in BUNDLE_DIR, else classical); 'dataset' = "
        "the data set's own masks",
    )
    p.add_argument(
        "--pattern-c",
        type=float,
        default=0.3,
        metavar="C",
        help="lesion-pattern: inverse L2 regularisation of the logistic model (default 0.3)",
    )


def _add_card_arguments(p: argparse.ArgumentParser) -> None:
    """What the model card says about the bundle, and whether progress bars show."""
    p.add_argument("--name", default=None, help="bundle name in the model card (default: folder name)")
    p.add_argument("--bundle-version", default=None, help="bundle version in the model card")
    p.add_argument("--description", default=None, help="bundle description in the model card")
    add_progress_flags(p)


def architecture(args: argparse.Namespace) -> dict:
    """The architecture dict the options describe (see pipeline.nets)."""
    from pipeline.nets import classifier_arch, unet_arch
    from pipeline.params import ChainParams
    from pipeline.training import TrainError

    chain = ChainParams()
    if args.role == "segmentation":
        if any(v is not None for v in (args.backbone, args.layers, args.block, args.widths)):
            raise TrainError(
                "--backbone/--layers/--block/--widths describe the classifier and locator; "
                "the segmentation U-Net takes --features"
            )
        features = args.features or DEFAULT_UNET_FEATURES
        if len(features) != 6:
            raise TrainError(f"--features needs 6 values (BasicUNet), got {len(features)}")
        return unet_arch(
            features=features, input_size=args.input_size or chain.unet_input_size, lesion_head=args.lesion_head
        )
    if not args.lesion_head:
        raise TrainError("--no-lesion-head describes the segmentation U-Net")
    if args.features is not None:
        raise TrainError("--features describes the segmentation U-Net; use --backbone/--layers/--widths here")
    block, layers, widths = BACKBONES[args.backbone or "tiny"]
    layers, widths, block = args.layers or layers, args.widths or widths, args.block or block
    if len(layers) != 4 or len(widths) != 4:
        raise TrainError(f"--layers and --widths need 4 values each, got {len(layers)} and {len(widths)}")
    return classifier_arch(
        4 if args.role == "classifier" else 2,
        layers=layers,
        block=block,
        block_inplanes=widths,
        input_size=args.input_size or chain.input_size,
    )


def command_line(args: argparse.Namespace) -> str:
    """The canonical command that reproduces this run (every option spelled out)."""
    parts = ["dicomnode", "train", args.role]
    for spec in args.data:
        parts += ["--data", spec]
    parts += ["--out", str(args.out)]
    arch = architecture(args)
    if args.role == "segmentation":
        parts += ["--features", ",".join(map(str, arch["features"]))]
        if arch["num_classes"] == 2:
            parts += ["--no-lesion-head"]
        if args.lesion_weight is not None:
            parts += ["--lesion-weight", repr(args.lesion_weight)]
        if args.paint_consolidation is not None:
            parts += ["--paint-consolidation", repr(args.paint_consolidation)]
        if args.paint_as_lesion:
            parts += ["--paint-as-lesion"]
    else:
        parts += [
            "--block",
            arch["block"],
            "--layers",
            ",".join(map(str, arch["layers"])),
            "--widths",
            ",".join(map(str, arch["block_inplanes"])),
        ]
    parts += [
        "--input-size",
        str(arch["input_size"]),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        repr(args.lr),
        "--device",
        args.device,
        "--seed",
        str(args.seed),
        "--val-fraction",
        repr(args.val_fraction),
    ]
    if args.max_slices_per_case is not None:
        parts += ["--max-slices-per-case", str(args.max_slices_per_case)]
    if args.role != "segmentation":
        parts += ["--lung-masks", args.lung_masks]
    return shlex.join(parts)


def _run_lesion_pattern(args: argparse.Namespace) -> int:
    from pipeline.training import TrainError
    from pipeline.training.pattern import fit_bundle_pattern
    from pipeline.types import PipelineError

    command = shlex.join(
        [
            "dicomnode",
            "train",
            "lesion-pattern",
            *[a for spec in args.data for a in ("--data", spec)],
            "--out",
            str(args.out),
            "--pattern-c",
            repr(args.pattern_c),
            "--device",
            args.device,
        ]
    )
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        if not args.pattern_c > 0:
            raise TrainError(f"--pattern-c must be positive, got {args.pattern_c}")
        model = fit_bundle_pattern(args.out, args.data, args.device, args.pattern_c, progress, command)
    except (PipelineError, TrainError, ValueError, OSError) as e:
        print(f"dicomnode train lesion-pattern: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    training = model.training or {}
    counts = ", ".join(f"{k} {v}" for k, v in training["class_counts"].items())
    print(f"lesion-pattern: fitted on {training['n_cases']} case(s) ({counts}); bundle {args.out}")
    return 0


CXR_WIDTHS = (8, 16, 32, 64)
CXR_INPUT_SIZE = 128


def cxr_architecture(args: argparse.Namespace) -> dict:
    """The CXR network the options describe (pipeline.nets.cxr_arch; default widths 8-64, 128 px)."""
    from pipeline.cxr import DEFAULT_CXR_CLASSES, check_classes
    from pipeline.nets import cxr_arch

    classes = check_classes(args.classes.split(",") if args.classes else DEFAULT_CXR_CLASSES)
    block, layers, widths = BACKBONES[args.backbone] if args.backbone else ("basic", (1, 1, 1, 1), CXR_WIDTHS)
    return cxr_arch(
        classes,
        layers=args.layers or layers,
        block=args.block or block,
        block_inplanes=args.widths or widths,
        input_size=args.input_size or CXR_INPUT_SIZE,
    )


def _cxr_command(args: argparse.Namespace, arch: dict) -> str:
    parts = ["dicomnode", "train", "cxr", *[a for spec in args.data for a in ("--data", spec)], "--out", str(args.out)]
    parts += ["--classes", ",".join(arch["classes"]), "--block", arch["block"]]
    parts += ["--layers", ",".join(map(str, arch["layers"])), "--widths", ",".join(map(str, arch["block_inplanes"]))]
    parts += ["--input-size", str(arch["input_size"]), "--epochs", str(args.epochs)]
    parts += ["--batch-size", str(args.batch_size)]
    parts += ["--lr", repr(args.lr), "--device", args.device, "--seed", str(args.seed)]
    return shlex.join(parts + ["--val-fraction", repr(args.val_fraction)])


def _run_cxr(args: argparse.Namespace) -> int:
    from pipeline.training import TrainError
    from pipeline.training.cxr import CxrTrainSettings, train_cxr
    from pipeline.types import PipelineError

    try:
        if args.features is not None or not args.lesion_head:
            raise TrainError("--features and --no-lesion-head describe the segmentation U-Net, not the CXR model")
        arch = cxr_architecture(args)
        settings = CxrTrainSettings(
            data_specs=tuple(args.data),
            out_dir=args.out,
            architecture=arch,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            device=args.device,
            seed=args.seed,
            val_fraction=args.val_fraction,
            threads=args.threads,
            command=_cxr_command(args, arch),
            name=args.name,
        )
        training = train_cxr(settings)
    except (PipelineError, TrainError, ValueError, OSError) as e:
        print(f"dicomnode train cxr: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    figures = ", ".join(f"{k} {v:.4f}" for k, v in training["validation"].items() if k.startswith("val_"))
    print(
        f"cxr: {training['epochs']} epoch(s) on {training['n_train_cases']} case(s) "
        f"({', '.join(training['classes'])}); bundle {args.out}; {figures or 'no validation set'}"
    )
    return 0


def _train_params(args: argparse.Namespace) -> TrainParams:
    """TrainParams with the command line's loss and augmentation options."""
    from dataclasses import replace

    from pipeline.training.params import TrainParams

    train = TrainParams()
    if args.lesion_weight is not None:
        train = replace(train, lesion_weight=args.lesion_weight)
    if args.paint_consolidation is not None or args.paint_as_lesion:
        augment = replace(train.augment, paint_as_lesion=bool(args.paint_as_lesion))
        if args.paint_consolidation is not None:
            augment = replace(augment, paint_probability=float(args.paint_consolidation))
        train = replace(train, augment=augment)
    return train


def run(args: argparse.Namespace) -> int:
    from pipeline.training import TrainError, TrainSettings, train_role
    from pipeline.types import PipelineError

    if args.role == "lesion-pattern":
        return _run_lesion_pattern(args)
    if args.role == "cxr":
        return _run_cxr(args)
    if args.classes is not None:
        print(f"dicomnode train {args.role}: error: --classes describes the cxr model only", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings = TrainSettings(
            role=args.role,
            data_specs=tuple(args.data),
            out_dir=args.out,
            architecture=architecture(args),
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            device=args.device,
            seed=args.seed,
            resume=args.resume,
            val_fraction=args.val_fraction,
            workers=args.workers,
            threads=args.threads,
            max_slices_per_case=args.max_slices_per_case,
            lung_masks=args.lung_masks,
            command=command_line(args),
            name=args.name,
            version=args.bundle_version,
            description=args.description,
            progress=args.progress,
            train=_train_params(args),
        )
        outcome = train_role(settings)
    except (PipelineError, TrainError, ValueError, OSError) as e:
        # Data set readers name the file that failed; one line is what a user needs
        # (-v adds the traceback for a developer).
        if getattr(args, "verbose", False):
            log.exception("training failed")
        print(f"dicomnode train {args.role}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    figures = ", ".join(f"{k} {v:.4f}" for k, v in outcome.validation.items() if isinstance(v, float))
    print(f"{args.role}: {outcome.epochs_done} epoch(s); bundle {outcome.bundle_dir}; {figures or 'no validation set'}")
    return 0
