"""Packages that share their name with their main function: `cnnlab.train(...)`, `cnnlab.transfer(...)`.

`cnnlab.train` is exported lazily as the function `cnnlab.train.train`, but once anything imports the
sub-package (`import cnnlab.train.loop`), Python binds the attribute `cnnlab.train` to the package and
the lazy export is never consulted again. Making the package callable keeps `cnnlab.train(...)` working
whatever was imported first.
"""

from __future__ import annotations

import sys
import types


def make_callable(module_name: str, func_name: str) -> None:
    """Calling the module `module_name` calls its attribute `func_name` with the same arguments."""

    class CallablePackage(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(self, func_name)(*args, **kwargs)

    sys.modules[module_name].__class__ = CallablePackage
