"""`cnnlab show filters|features|saliency|errors RUN …`: pictures of what a trained run learned.

Each writes one PNG (--out FILE, default RUN/show/<what>.png) and prints what it shows and where.
"""

from __future__ import annotations

import argparse

from cnnlab.cli._args import COUNT, check_out

ORDER = 46


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run directory written by `cnnlab train`")


def _tail(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="FILE", help="PNG file to write (default: inside RUN/show/)")
    p.add_argument("--weights", default="best", choices=("best", "last"), help="which weights (default best)")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("show", help="look inside a trained run: kernels, feature maps, saliency, worst errors",
                       description=__doc__)
    what = p.add_subparsers(dest="what", metavar="WHAT")

    f = what.add_parser("filters", help="the first layer's kernels as an image grid",
                        description="The first convolution's kernels, one tile per output channel.")
    _common(f)
    _tail(f)

    m = what.add_parser("features", help="feature maps of an image at chosen layers",
                        description="Feature maps of IMAGE at named layers (the strongest channels of each).")
    _common(m)
    m.add_argument("image", metavar="IMAGE", help="image file (PNG, JPEG, …), converted as `cnnlab predict` does")
    m.add_argument("--layers", nargs="+", metavar="NAME",
                   help="module names, e.g. features.0 layer2 (default: a few spread over depth)")
    m.add_argument("--channels", type=COUNT, default=12, help="channels shown per layer (default 12)")
    _tail(m)

    s = what.add_parser("saliency", help="which pixels drove the prediction (gradient or Grad-CAM)",
                        description="Saliency of IMAGE for the predicted class: the input gradient "
                        "(Simonyan et al. 2014) or Grad-CAM (Selvaraju et al. 2017).")
    _common(s)
    s.add_argument("image", metavar="IMAGE", help="image file (PNG, JPEG, …)")
    s.add_argument("--method", default="gradient", choices=("gradient", "gradcam"), help="default gradient")
    s.add_argument("--layer", metavar="NAME", help="Grad-CAM layer (default: the last layer with a feature map)")
    _tail(s)

    e = what.add_parser("errors", help="the most confidently misclassified test images",
                        description="The misclassified images the model was surest about, with true and "
                        "predicted labels.")
    _common(e)
    e.add_argument("--count", type=COUNT, default=16, help="how many images (default 16)")
    e.add_argument("--split", default="test", choices=("test", "train"), help="default test")
    e.add_argument("--data-dir", help="folder holding the dataset's files")
    _tail(e)

    p.set_defaults(func=run, _show_parser=p)
    return p


def run(args: argparse.Namespace) -> int:
    if not getattr(args, "what", None):
        args._show_parser.print_help()
        return 2
    check_out(args.out)
    from cnnlab.inspect.visual import show_errors, show_features, show_filters, show_saliency  # noqa: PLC0415 - torch only once a command runs: fast --help

    if args.what == "filters":
        shown = show_filters(args.run, out=args.out, which=args.weights)
    elif args.what == "features":
        shown = show_features(args.run, args.image, layers=args.layers, out=args.out, which=args.weights,
                              per_layer=args.channels)
    elif args.what == "saliency":
        shown = show_saliency(args.run, args.image, method=args.method, layer=args.layer, out=args.out,
                              which=args.weights)
    else:
        shown = show_errors(args.run, count=args.count, split=args.split, out=args.out, which=args.weights,
                            data_dir=args.data_dir)
    print(shown)
    return 0
