"""`cnnlab native build`: build (once) and load cnnlab's C kernels, and say whether they load.

`cnnlab.fuse` builds the kernels the first time a model needs them; `native build` does it ahead of time
(e.g. in a container image or before a timed run) and prints where they are and whether they load.
"""

from __future__ import annotations

import argparse

ORDER = 90


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "native",
        help="build cnnlab's C kernels now (cnnlab.fuse otherwise builds them on first use)",
        description="Build (once, into the user cache) and load the C 2x2 max-pool kernel that cnnlab.fuse uses; "
        "Prints one line: whether they load, and if not, why (PyTorch's operators then run). CNNLAB_NATIVE=0 turns them off; "
        "CNNLAB_NATIVE_CACHE chooses the folder; CC the compiler.",
    )
    p.add_argument("action", choices=("build",), help="build: compile if needed, then load")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from cnnlab.layers import _native  # noqa: PLC0415 - imports torch; keep --help fast

    _native.library()
    print(_native.status())  # without a compiler: "C kernels off: <why>", not an error (PyTorch's operators run)
    return 0
