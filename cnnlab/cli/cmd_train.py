"""`cnnlab train`: train a model on a dataset and write a run directory (calls `cnnlab.training.train`)."""

from __future__ import annotations

import argparse
import sys

from cnnlab.cli._args import check_out, int_in, threads
from cnnlab.core.machine import others_busy, threads_for
from cnnlab.errors import CnnlabError
from cnnlab.runtime import set_threads

ORDER = 40

EPILOG = """examples:
  cnnlab train --model simple_cnn --data fashion-mnist --epochs 2
  cnnlab train --recipe fashion-mnist                      # the best known setup for the dataset
  cnnlab train --model "conv3x3-32 maxpool2 fc10" --data mnist --optimizer sgd --lr 0.05
  cnnlab train --config run.toml --epochs 20               # a TOML file of options; flags still win
  cnnlab train --resume runs/simple_cnn-fashion-mnist-20261128-101500
  cnnlab train --nproc 2 --model resnet20 --data cifar10   # DDP on this machine (or run under torchrun)
  cnnlab train --data digits --epochs 3 --folds 5          # 5-fold cross-validation: RUN/fold-1..5, folds.json
  cnnlab train --data imagefolder:photos --class-weights auto --log tensorboard
"""


MIX_HELP = ("MixUp / CutMix with lambda (and box) drawn per sample, train only: METHOD[:ALPHA][:p=P],... with METHOD "
            "mixup or cutmix, lambda ~ Beta(ALPHA, ALPHA) (ALPHA > 0, default 1). Each sample draws one method: METHOD "
            "with probability P; items without p share what the given p's leave of 1 (the p's add up to <= 1; "
            "what is left is unmixed). mixup:0.2 | cutmix:1.0 | mixup:0.2,cutmix:1.0 (half each) | "
            "mixup:0.2,cutmix:1.0:p=0.5 (cutmix 0.5, mixup 0.5) | cutmix:1.0:p=0.5 (half unmixed). Targets become "
            "soft (label smoothing applies to them); train accuracy counts the dominant class of each mixed target")


def _model_option(text: str) -> tuple[str, object]:
    import ast  # noqa: PLC0415

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE such as width=16, got '{text}'")
    try:
        return key.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.strip(), value  # a bare word stays a string (e.g. head=gap)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a model and write a run directory (weights, metrics, curves)",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    g = p.add_argument_group("what to train")
    g.add_argument("--model", help="registered name (`cnnlab models`), spec or timm:NAME; default simple_cnn")
    g.add_argument("--model-option", dest="extra", action="append", type=_model_option, metavar="KEY=VALUE",
                   help="builder option of a registered model, e.g. --model-option width=16 (repeatable)")
    g.add_argument("--data", help="dataset name (`cnnlab data list`); default fashion-mnist")
    g.add_argument("--data-dir", help="folder holding the dataset's files")
    g.add_argument("--image-size", type=int, help="resize images to this side, in pixels")
    g.add_argument("--val-fraction", type=float,
                   help="share of train held out (stratified, seeded) to choose the epoch on; default 0.1, or the "
                        "dataset's own val/ split; 0: train on all of it and keep the last weights")
    g.add_argument("--recipe", help="start from a named recipe (see --list-recipes)")
    g.add_argument("--config", help="TOML file of options (flags given here still win)")
    g.add_argument("--resume", metavar="RUN", help="continue the run in this directory from its last checkpoint")
    h = p.add_argument_group("how to train")
    h.add_argument("--epochs", type=int, help="default 10, more on a small training set (at least 500 steps)")
    h.add_argument("--batch-size", type=int, help="global batch (split across processes); default 128, "
                   "less on a small training set (at least 20 steps per epoch)")
    h.add_argument("--eval-batch-size", type=int)
    h.add_argument("--eval-every", type=int, help="evaluate every N epochs and after the last (default 1: every epoch)")
    h.add_argument("--eval-test-every-epoch", action="store_const", const=True, default=None,
                   help="also evaluate the test set after each epoch (recorded and plotted, never used to choose); "
                        "by default it is evaluated once, on the chosen weights")
    h.add_argument("--optimizer", help="sgd, adam or adamw (default)")
    h.add_argument("--lr", type=float, help="peak learning rate (default: 1e-3 adam/adamw, 3e-3 on a small "
                   "training set; 0.05 sgd)")
    h.add_argument("--momentum", type=float, help="SGD momentum or Adam beta1 (default 0.9)")
    h.add_argument("--weight-decay", type=float)
    h.add_argument("--schedule", help="onecycle (default), cosine, step, constant or plateau (cut on stalls)")
    h.add_argument("--warmup", type=float, help="epochs of linear warm-up")
    h.add_argument("--label-smoothing", type=float)
    h.add_argument("--grad-clip", type=float, help="clip the gradient norm to this value")
    h.add_argument("--whiten", action=argparse.BooleanOptionalAction, default=None,
                   help="make the first convolution a frozen patch-whitening layer fitted on the training split "
                   "(airbench); it needs at most 2*C*k*k filters, e.g. a spec starting conv3x3-18 on grayscale "
                   "(--no-whiten: a recipe's without it)")
    h.add_argument("--ema", type=float, metavar="DECAY",
                   help="also keep an exponential moving average of the weights (e.g. 0.999 per step): evaluated "
                   "each epoch, saved as RUN/ema.safetensors (`cnnlab eval RUN --weights ema`)")
    h.add_argument("--early-stop", type=int_in(1, 100_000), metavar="PATIENCE",
                   help="stop after PATIENCE evaluated epochs without improvement of --monitor (needs --val-fraction)")
    h.add_argument("--monitor", help="what --early-stop and --schedule plateau watch: val_loss (default) or val_accuracy")
    h.add_argument("--plateau-patience", type=int_in(0, 100_000), metavar="EPOCHS",
                   help="--schedule plateau: evaluated epochs without improvement before a cut (default 3)")
    h.add_argument("--plateau-factor", type=float, help="--schedule plateau: multiply the rates by this (default 0.1)")
    h.add_argument("--dropout", type=float, help="dropout probability, for models that have dropout")
    h.add_argument("--augment", help='augmentation pipeline, e.g. "flip,crop:4" (`cnnlab augment --help`)')
    h.add_argument("--mix", metavar="SPEC", help=MIX_HELP)
    h.add_argument("--seed", type=int)
    h.add_argument("--class-weights", help="auto: weigh the loss by inverse class frequency (imbalanced classes); "
                   "none (default)")
    h.add_argument("--sampler", help="balanced: every class equally often in each epoch (rare images repeat); "
                   "shuffle (default)")
    h.add_argument("--folds", type=int_in(2, 100), metavar="K",
                   help="k-fold cross-validation: K runs on stratified folds of train (RUN/fold-1..K, folds.json)")
    h.add_argument("--tta", help="test-time augmentation in evaluation: none (default), flip (image + mirror), "
                   "shift (+ 1-pixel shifts) or flip-shift (both, 10 views)")
    s = p.add_argument_group("speed and output")
    s.add_argument("--precision", help="auto (default: bf16 where supported), fp32, bf16, fp16")
    s.add_argument("--device", help="auto (default), cpu or cuda")
    s.add_argument("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory layout (default on)")
    s.add_argument("--compile", action="store_const", const=True, default=None, help="torch.compile the model")
    s.add_argument("--no-fuse", dest="fuse", action="store_const", const=False, default=None,
                   help="train the model's modules as built, without cnnlab.fuse (same values, slower)")
    s.add_argument("--threads", type=threads, help="CPU threads for torch: a number, or auto: the usable CPUs less "
                   "those other processes keep busy, measured at start (default: torch's, all cores)")
    s.add_argument("--out", help="run directory (default runs/<model>-<data>-<time>)")
    s.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps")
    s.add_argument("--keep-checkpoints", type=int)
    s.add_argument("--nproc", type=int_in(1, 1024), default=1, help="processes on this machine (DDP through torchrun)")
    s.add_argument("--log", help="also log to csv (RUN/metrics.csv), tensorboard (RUN/tensorboard/; needs the "
                   "tensorboard package) or both: csv,tensorboard")
    s.add_argument("--quiet", action="store_true", help="no progress bar: one line per epoch (for logs)")
    s.add_argument("--monitor-gradients", action="store_const", const=True, default=None,
                   help="record per-layer gradient norms (RUN/gradients.jsonl, gradients.png); warn when they vanish")
    a("--list-recipes", action="store_true", help="list the named recipes and exit")
    p.set_defaults(func=run)
    return p


OPTION_NAMES = ("model", "data", "data_dir", "image_size", "val_fraction", "epochs", "batch_size", "eval_batch_size",
                "eval_every", "optimizer", "lr", "momentum", "weight_decay", "schedule", "warmup", "label_smoothing", "grad_clip",
                "dropout", "augment", "seed", "precision", "device", "channels_last", "compile", "fuse", "out",
                "checkpoint_every", "keep_checkpoints", "monitor_gradients", "tta", "eval_test_every_epoch",
                "class_weights", "sampler", "log")
OPTION_NAMES += ("mix",)
OPTION_NAMES += ("whiten", "ema", "early_stop", "monitor", "plateau_patience", "plateau_factor")  # whitening, averaging, stopping


def run(args: argparse.Namespace) -> int:
    if not args.resume:
        check_out(args.out, folder=True)
    if args.folds and args.resume:
        raise CnnlabError(f"--folds starts {args.folds} new runs; to continue one fold, --resume its folder (RUN/fold-3)")
    from cnnlab.training import (  # noqa: PLC0415 - torch only once a command runs: fast --help
        NonFiniteLossError,
        TrainingInterrupted,
        distributed,
        recipes,
        resolve_config,
        train,
        train_folds,
    )

    if args.list_recipes:
        print(recipes.describe_recipes())
        return 0
    options = {name: getattr(args, name) for name in OPTION_NAMES}
    if args.extra:
        options["extra"] = dict(args.extra)
    if args.nproc != 1:
        if args.nproc < 1:
            raise CnnlabError(f"--nproc must be a positive integer, got {args.nproc}")
        resolve_config({**options, "folds": args.folds, "fold": 1 if args.folds else None}, recipe=args.recipe,
                       config_file=args.config, resume=args.resume).resolved()
        argv = _without_nproc(sys.argv[1:])
        return distributed.launch(args.nproc, argv)

    if args.threads is not None:  # the process is ours: set here, in the CLI, never by a library call
        chosen = threads_for(others := others_busy()) if args.threads == "auto" else args.threads
        set_threads(chosen)
        if args.threads == "auto":
            print(f"threads: {chosen} (auto: other processes keep {others:.1f} CPUs busy)", flush=True)
    try:
        if args.folds:
            train_folds(args.folds, recipe=args.recipe, config=args.config, progress=not args.quiet, **options)
        else:
            train(recipe=args.recipe, config=args.config, resume=args.resume, progress=not args.quiet, **options)
        distributed.shutdown()
    except NonFiniteLossError as e:
        sys.stderr.write(f"cnnlab train: error: {e}\n")
        return 1
    except TrainingInterrupted as e:
        sys.stderr.write(f"cnnlab train: {e}\n")
        return 128 + int(e.signum)
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out
