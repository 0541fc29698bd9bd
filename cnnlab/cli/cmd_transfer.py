"""`cnnlab transfer`: reuse a trained ConvNet on a new, small dataset.

    cnnlab transfer --backbone RUN_DIR --data digits --strategy auto --train-per-class 10 --out DIR
    cnnlab transfer --backbone resnet18:imagenet --data digits --strategy features --head svm
    cnnlab transfer probe --backbone vgg16:vgg16.pth --data digits --out DIR

Backbones: a run directory, NAME:PATH (.pth state dict or .safetensors), NAME:imagenet (torchvision's
published weights, checksum verified), NAME (random weights); timm's architectures as timm:NAME (random),
timm:NAME:PATH or timm:NAME:pretrained (timm's download; $CNNLAB_TIMM_URL names a mirror), with timm's
pretrained config (input size, mean/std, interpolation) applied and printed. Strategies: features (frozen backbone +
classifier), finetune (head first, then all layers with small per-stage rates), retrain (all layers from
the backbone's weights), auto (names the lecture's case, then measures the candidates on held-out parts
of the training set and runs the best; the test set takes no part), all, or a comma list.
Each result is printed next to two baselines: logistic regression on raw pixels and the same
architecture trained from scratch.
"""

from __future__ import annotations

import argparse

from cnnlab.cli._args import BATCH, IMAGE_SIDE, SEED, STEPS, check_out, int_in

ORDER = 45


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("transfer", help="transfer learning: features, fine-tuning, retraining, layer probes",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", nargs="?", choices=("run", "probe"), default="run",
                   help="run (default): the strategies and baselines; probe: a linear probe at every stage")
    p.add_argument("--backbone", required=True,
                   help="RUN_DIR, NAME:PATH, NAME:imagenet, NAME, or timm:NAME[:PATH|:pretrained] (needs timm)")
    p.add_argument("--data", required=True, help="dataset name (`cnnlab data list`)")
    p.add_argument("--data-dir", help="folder holding the dataset's files")
    p.add_argument("--strategy", default="auto", help="features, finetune, retrain, auto, all, or a comma list")
    p.add_argument("--head", default="logreg", help="for features: logreg, svm, linear or mlp (default logreg)")
    p.add_argument("--layer", default="pre_logits",
                   help="where to cut (default pre_logits: what the classifier reads); a stage, features, fc6, fc7, "
                        "or any module name")
    p.add_argument("--train-per-class", type=int_in(1, 10_000_000), help="use only K training images per class (seeded)")
    p.add_argument("--steps", type=STEPS, default=300, help="optimizer steps for finetune/retrain/scratch (default 300)")
    p.add_argument("--lr", type=float, default=3e-3,
                   help="fine-tuning head rate; the last stage gets lr/10, earlier ones half each (default 3e-3)")
    p.add_argument("--batch-size", type=BATCH, default=64)
    p.add_argument("--image-size", type=IMAGE_SIDE, help="resize inputs to this size (backbones with adaptive pooling only)")
    p.add_argument("--large-per-class", type=int_in(1, 10_000_000), default=500, help="auto: images per class that count as large")
    p.add_argument("--auto-steps", type=STEPS,
                   help="auto: steps of finetune/retrain while they are measured on the training set (default --steps)")
    p.add_argument("--no-baselines", action="store_true", help="skip the raw-pixel and from-scratch baselines")
    p.add_argument("--cache-dir", help="feature cache (default $CNNLAB_FEATURE_CACHE or ~/.cache/cnnlab/features)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--out", help="folder for results.json/.md (probe: probe.json/.md/.png)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    check_out(args.out, folder=True)
    from cnnlab.transfer_learning.api import probe, transfer  # noqa: PLC0415 - torch only once a command runs: fast --help

    common = dict(train_per_class=args.train_per_class, out=args.out, seed=args.seed, image_size=args.image_size,
                  cache_dir=args.cache_dir, device=args.device, precision=args.precision, data_dir=args.data_dir)
    if args.action == "probe":
        result = probe(args.backbone, args.data, **common)
        print(result.table())
    else:
        result = transfer(args.backbone, args.data, strategy=args.strategy, head=args.head, layer=args.layer,
                          baselines=not args.no_baselines, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                          large_per_class=args.large_per_class, auto_steps=args.auto_steps, **common)
        print()
        print(result.table())
    if args.out:
        print(f"wrote {args.out}")
    return 0
