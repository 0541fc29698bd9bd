"""`cnnlab gradients`: per-layer gradient norms and loss curves of deep plain nets vs ResNets (He et al. 2016).

Trains each model for --steps SGD steps on the same batches and writes OUT/table.md, OUT/gradients.json
and OUT/plot.png (left: gradient norm against depth, log scale, at init and at the end; right: loss).
"""

from __future__ import annotations

import argparse

import cnnlab  # its public names import torch on first use
from cnnlab.cli._args import BATCH, SEED, STEPS, check_out

ORDER = 45

EPILOG = """examples:
  cnnlab gradients --out runs/gradients                     # plain20,plain56,resnet20,resnet56 on fashion-mnist
  cnnlab gradients --models plain56,resnet56 --no-batch-norm --out runs/nobn
  cnnlab gradients --models plain20 --activation sigmoid --init-scale 0.5 --out runs/sigmoid
  cnnlab gradients --models resnet56 --no-skip --json        # resnet56 without its shortcuts = plain56
  cnnlab gradients --models plain56,resnet56 --no-batch-norm --activation sigmoid --preact --out runs/preact
knobs (applied to every model): --init-scale (<1 shrinks, >1 grows the Kaiming init), --no-batch-norm,
--activation relu|tanh|sigmoid|..., --no-skip (resnet<d> loses its shortcuts), --preact (pre-activation
blocks: nothing after the addition, so the shortcut path is a pure identity)
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("gradients", help="per-layer gradient norms and loss curves: plain nets vs ResNets",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="plain20,plain56,resnet20,resnet56",
                   help="comma-separated model names (default plain20,plain56,resnet20,resnet56)")
    p.add_argument("--data", default="fashion-mnist", help="dataset name (default fashion-mnist)")
    p.add_argument("--data-dir", help="folder holding the dataset's files")
    p.add_argument("--steps", type=STEPS, default=40, help="training steps per model (default 40)")
    p.add_argument("--batch-size", type=BATCH, default=64, help="images per step (default 64)")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"), help="sgd (Nesterov momentum 0.9, default) or adam")
    p.add_argument("--lr", type=float, help="learning rate, constant (default 0.05 sgd, 1e-3 adam)")
    p.add_argument("--init-scale", type=float, default=1.0, help="multiplies the Kaiming init's std (default 1)")
    p.add_argument("--no-batch-norm", dest="batch_norm", action="store_false", help="build the models without BN")
    p.add_argument("--activation", default="relu", help="relu (default), tanh, sigmoid, gelu, elu, leakyrelu")
    p.add_argument("--no-skip", dest="skip", action="store_false", help="remove the shortcuts of resnet<d>")
    p.add_argument("--preact", action="store_true",
                   help="pre-activation blocks (He et al. 2016, Identity Mappings): bn-act-conv twice, then the sum")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", default="gradients", help="output folder (default ./gradients)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    check_out(args.out, folder=True)
    from cnnlab.experiments._base import Progress  # noqa: PLC0415 - torch only once a command runs: fast --help

    models = [m for m in args.models.split(",") if m.strip()]
    progress = Progress("gradients", enabled=not args.json)
    progress.total = len(models) * max(args.steps, 0)
    try:
        lab = cnnlab.gradient_lab(models, args.data, steps=args.steps, batch_size=args.batch_size, optimizer=args.optimizer,
                           lr=args.lr, init_scale=args.init_scale, batch_norm=args.batch_norm,
                           activation=args.activation, skip=args.skip, preact=args.preact, seed=args.seed, device=args.device,
                           data_dir=args.data_dir, progress=lambda what, n: progress.step(what, n))
    finally:
        progress.close()
    out = lab.write(args.out)
    if args.json:
        print(json.dumps(lab.to_dict(), indent=2))
        return 0
    print(f"{lab.data}, {lab.steps} steps of batch {lab.batch_size}, {lab.optimizer} lr {lab.lr:g}, "
          f"{lab.device} {lab.precision}, {lab.seconds:.0f} s")
    print(lab.table())
    for m in lab.models:
        for when, msgs in (("init", m.warnings_init), ("end", m.warnings_end)):
            for msg in msgs:
                print(f"{m.label} at {when}: {msg}")
    print(f"wrote {out}/table.md, {out}/gradients.json, {out}/plot.png")
    return 0
