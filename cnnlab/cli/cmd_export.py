"""`cnnlab export RUN --format onnx|torchscript [--quantize int8]`: a deployable model (input: float images
in [0, 1]); with --quantize int8, also an INT8 ONNX model for fast CPU inference, measured against fp32."""

from __future__ import annotations

import argparse

from cnnlab.cli._args import check_out, float_in, int_in
from cnnlab.errors import CnnlabError

ORDER = 43


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="export a trained run to ONNX or TorchScript (normalisation included)",
                       description=__doc__)
    p.add_argument("run", metavar="RUN", help="run directory written by `cnnlab train`")
    p.add_argument("--format", default="onnx", help="onnx (default) or torchscript")
    p.add_argument("--out", help="output file (default RUN/export/<weights>.onnx or .pt)")
    p.add_argument("--weights", default="best", choices=("best", "last"), help="which weights (default best)")
    p.add_argument("--opset", type=int_in(1, 100), default=17, help="ONNX opset (default 17)")
    q = p.add_argument_group("INT8 (ONNX Runtime static quantisation; writes <file>.int8.onnx beside the fp32 file)")
    q.add_argument("--quantize", choices=("none", "int8"), default="none",
                   help="int8: weights int8 per channel, activations uint8 calibrated on training images")
    q.add_argument("--calibration-images", type=int_in(1, 100_000), default=512,
                   help="training images that set the activation ranges (default 512, seeded)")
    q.add_argument("--max-drop", type=float_in(0.0, 100.0), default=1.0,
                   help="refuse the INT8 file if its test accuracy is more than this many points below fp32's "
                        "(default 1.0)")
    q.add_argument("--data-dir", help="folder holding the dataset's files (default: where training found them)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    check_out(args.out)
    if args.quantize != "none" and args.format.lower() != "onnx":
        raise CnnlabError("--quantize int8 goes through ONNX Runtime: use it with --format onnx")
    from cnnlab.training.export import export, int8_path, read_export_info  # noqa: PLC0415 - torch only once a command runs: fast --help

    path = export(args.run, args.format, args.out, which=args.weights, opset=args.opset, quantize=args.quantize,
                  calibration_images=args.calibration_images, max_drop=args.max_drop, data_dir=args.data_dir)
    print(f"wrote {path} (input: float32 images (N, C, H, W) in [0, 1]; output: logits) and {path}.json")
    check = read_export_info(path)["verified"]
    print(f"checked with {check['with']} against PyTorch on {check['batch']} images: largest absolute "
          f"difference in the logits {check['max_abs_diff']:.2g} (tolerance {check['tolerance']:.2g})")
    if args.quantize == "int8":
        q = read_export_info(int8_path(path))["verified"]
        print(f"wrote {int8_path(path)} and its .json: INT8 ({q['scheme']}), activation ranges from {q['calibration']}")
        print(f"test accuracy on {q['test_images']:,} images (ONNX Runtime): fp32 {q['fp32_accuracy']:.2f}%, "
              f"INT8 {q['int8_accuracy']:.2f}% (INT8 - fp32 {-q['drop']:+.2f} points; same class on {q['agreement']:.2f}% of images)")
        print(f"file size: fp32 {_size(q['fp32_bytes'])}, INT8 {_size(q['int8_bytes'])} "
              f"({q['fp32_bytes'] / q['int8_bytes']:.1f}x smaller)")
        print(f"speed over that pass (batch 256, {q['threads']} thread{'s' * (q['threads'] != 1)}, {q['cpu_class']} CPU): "
              f"fp32 {q['fp32_images_per_s']:,.0f} images/s, INT8 {q['int8_images_per_s']:,.0f} images/s "
              f"({q['int8_images_per_s'] / q['fp32_images_per_s']:.2f}x); benchmarks/inference.py measures batch 1 and 256 "
              "beside PyTorch")
    return 0


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
