"""The top-level API: every export resolves, and `cnnlab.train(...)` works whatever was imported first."""

from __future__ import annotations

import subprocess
import sys

import cnnlab


def test_every_export_resolves():
    for name in cnnlab.__all__:
        assert getattr(cnnlab, name) is not None, name


def test_train_and_transfer_stay_callable_after_their_packages_are_imported():
    # In a fresh interpreter: the packages (cnnlab.training, cnnlab.transfer_learning) are named apart from
    # the functions, so importing them first leaves cnnlab.train / cnnlab.transfer the functions (a package
    # of the function's name would rebind the attribute: TypeError "module is not callable").
    code = (
        "import cnnlab.training.loop, cnnlab.transfer_learning.freeze, cnnlab\n"
        "from cnnlab.training.api import train\n"
        "from cnnlab.transfer_learning.api import transfer\n"
        "try:\n"
        "    cnnlab.train(model='simple_cnn', data='digits', epochs=0)\n"
        "except cnnlab.CnnlabError as e:\n"
        "    print('train:', e)\n"
        "try:\n"
        "    cnnlab.transfer('no_such_model', 'digits')\n"
        "except cnnlab.CnnlabError as e:\n"
        "    print('transfer:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "train: epochs must be a positive integer" in out.stdout
    assert "transfer:" in out.stdout and "no_such_model" in out.stdout
