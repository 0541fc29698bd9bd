"""`cnnlab average RUN --last K`: stochastic weight averaging of a run's K newest checkpoints.

The raw weights of the checkpoints are averaged with equal weights, the batch-norm statistics are
recomputed on the run's training split (`torch.optim.swa_utils.update_bn`), and the result is written
beside the run's other weights as RUN/swa.safetensors (`cnnlab eval RUN --weights swa`). The run keeps
only `--keep-checkpoints` checkpoints (2 by default): train with `--keep-checkpoints K` to average K.
"""

from __future__ import annotations

import argparse

from cnnlab.cli._args import BATCH, int_in

ORDER = 42

EPILOG = """examples:
  cnnlab train --data digits --epochs 20 --keep-checkpoints 5 --out runs/d
  cnnlab average runs/d --last 3            # writes runs/d/swa.safetensors and prints its accuracy
  cnnlab eval runs/d --weights swa
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("average", help="average a run's last checkpoints (SWA), batch-norm statistics recomputed",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run directory written by `cnnlab train`")
    p.add_argument("--last", type=int_in(1, 1000), default=3, metavar="K", help="average the K newest checkpoints (default 3)")
    p.add_argument("--batch-size", type=BATCH, default=256, help="images per batch of the batch-norm pass and evaluation")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from cnnlab.training.averaging import average_checkpoints  # noqa: PLC0415 - torch only once a command runs

    result = average_checkpoints(args.run, args.last, device=args.device, batch_size=args.batch_size)
    print(result.summary())
    return 0
