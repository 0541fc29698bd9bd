"""`cnnlab export RUN --format onnx|torchscript`: a deployable model (input: float images in [0, 1])."""

from __future__ import annotations

import argparse

from cnnlab.cli._args import check_out, int_in

ORDER = 43


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="export a trained run to ONNX or TorchScript (normalisation included)",
                       description=__doc__)
    p.add_argument("run", metavar="RUN", help="run directory written by `cnnlab train`")
    p.add_argument("--format", default="onnx", help="onnx (default) or torchscript")
    p.add_argument("--out", help="output file (default RUN/export/<weights>.onnx or .pt)")
    p.add_argument("--weights", default="best", choices=("best", "last"), help="which weights (default best)")
    p.add_argument("--opset", type=int_in(1, 100), default=17, help="ONNX opset (default 17)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    check_out(args.out)
    from cnnlab.training.export import export, read_export_info  # noqa: PLC0415 - torch only once a command runs: fast --help

    path = export(args.run, args.format, args.out, which=args.weights, opset=args.opset)
    print(f"wrote {path} (input: float32 images (N, C, H, W) in [0, 1]; output: logits) and {path}.json")
    check = read_export_info(path)["verified"]
    print(f"checked with {check['with']} against PyTorch on {check['batch']} images: largest absolute "
          f"difference in the logits {check['max_abs_diff']:.2g} (tolerance {check['tolerance']:.2g})")
    return 0
