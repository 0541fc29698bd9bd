"""`cnnlab serve RUN`: a local demo page where you drop an image and see the top classes (calibrated
probabilities when `cnnlab calibrate` ran) with a Grad-CAM overlay of where the network looked."""

from __future__ import annotations

import argparse
import sys

from cnnlab.cli._args import COUNT, int_in

ORDER = 44


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="a local demo web page: drop an image, see top classes and Grad-CAM",
                       description=__doc__ + "\n\nListens on 127.0.0.1 (this machine only) unless --host says "
                       "otherwise; stop it with Ctrl-C.")
    p.add_argument("run", metavar="RUN", help="run directory written by `cnnlab train`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: every "
                   "network interface, visible to other machines)")
    p.add_argument("--port", type=int_in(0, 65535), default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--weights", default="best", choices=("best", "last"), help="which weights (default best)")
    p.add_argument("--top-k", type=COUNT, default=5, help="classes to show (default 5)")
    p.add_argument("--log", action="store_true", help="print one line per request on stderr")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from cnnlab.inspect.serve import make_server  # noqa: PLC0415 - torch only once a command runs: fast --help

    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.log else None
    server = make_server(args.run, args.host, args.port, which=args.weights, top_k=args.top_k, log=log)
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    print(f"serving {args.run} at http://{shown}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0
