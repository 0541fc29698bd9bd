"""Run many `cnnlab` command lines in one child interpreter under a memory limit, each timed and captured.

`run_batch(cases, cwd)` starts `python cli_batch.py` (this file) with the cases on stdin. The child sets
RLIMIT_AS, imports the CLI once, then calls `cnnlab.cli.main.main(argv)` for each case with stdout and
stderr captured and an alarm as a time limit, and appends one JSON line per finished case to a results
file. A case that kills the child (the kernel's OOM killer, a crash) is recorded as such and the child is
restarted after it, so one bad case cannot take the test runner or the other cases down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

CRASHED = "crashed"
TIMEOUT = "timeout"
SPEC = "conv3x3-4 maxpool2 fc10"


def write_run(path, card_spec: str = SPEC, weights_spec: str = SPEC, mean: float = 0.3):
    """A run folder as `cnnlab train` leaves one, written by hand for 1x8x8 images and 10 classes: weights of
    `weights_spec` (safetensors), a model card naming `card_spec`, config.json and one line of metrics."""
    from safetensors.torch import save_file  # noqa: PLC0415 - not needed by the child process

    from cnnlab.models.spec import build_spec  # noqa: PLC0415

    path.mkdir()
    model = build_spec(weights_spec, (1, 8, 8), 10)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "best.safetensors"))
    card = {"model": card_spec, "model_options": {}, "num_classes": 10, "classes": [str(i) for i in range(10)],
            "input_size": [1, 8, 8], "mean": [mean], "std": [0.3], "dataset": "digits", "epoch": 1,
            "accuracy": 0.5, "format": "cnnlab-weights-1", "extra": {}}
    (path / "best.json").write_text(json.dumps(card))
    (path / "config.json").write_text(json.dumps({"config": {"model": card_spec, "data": "digits", "epochs": 1}}))
    (path / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_accuracy": 0.5, "train_loss": 1.0}) + "\n")
    return path


def run_batch(cases: list[list[str]], cwd: str, *, memory_gib: float = 4, seconds_per_case: float = 60,
              warmup: list[list[str]] = ()) -> list[dict]:
    """One dict per case: argv, rc (int, "timeout" or "crashed"), stdout, stderr, seconds, maxrss_mib.

    `warmup`: command lines run first, untimed (they import torch, the zoo, scikit-learn's digits)."""
    results: list[dict] = []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout's cnnlab, wherever cwd is
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
               # glibc reserves 64 MiB of address space per malloc arena (up to 8 per core, one per busy thread:
               # torch's OpenMP pool, tqdm's monitor): reservations, not memory, that RLIMIT_AS would count
               MALLOC_ARENA_MAX="2")
    while len(results) < len(cases):
        todo = cases[len(results):]
        with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as out:
            payload = {"cases": todo, "memory": int(memory_gib * 2**30), "alarm": seconds_per_case,
                       "warmup": list(warmup), "results": out.name}
            proc = subprocess.run([sys.executable, __file__], input=json.dumps(payload), capture_output=True,
                                  text=True, cwd=cwd, env=env, timeout=seconds_per_case * len(todo) + 120)
            done = [json.loads(line) for line in out.read().splitlines() if line.strip()]
        results += done
        if len(done) < len(todo):  # the child died during case len(done)
            results.append({"argv": todo[len(done)], "rc": CRASHED, "stdout": "",
                            "stderr": f"child exited with {proc.returncode}: {proc.stderr[-2000:]}",
                            "seconds": None, "maxrss_mib": None})
    return results


def _child() -> None:
    import contextlib
    import io
    import resource
    import signal
    import time
    import traceback

    cfg = json.load(sys.stdin)
    resource.setrlimit(resource.RLIMIT_AS, (cfg["memory"], cfg["memory"]))

    class CaseTimeout(BaseException):  # not an Exception, so no handler in cnnlab can swallow it
        pass

    def on_alarm(*_):
        raise CaseTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    from cnnlab.cli.main import main

    def call(argv: list[str]) -> tuple[object, str, str, float]:
        out, err = io.StringIO(), io.StringIO()
        start = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, cfg["alarm"])
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main(list(argv))
        except SystemExit as e:  # argparse: usage errors and --help
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except CaseTimeout:
            rc = TIMEOUT
        except BaseException:  # what the interpreter would print: a traceback, exit 1
            err.write(traceback.format_exc())
            rc = 1
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return rc, out.getvalue(), err.getvalue(), time.perf_counter() - start

    for argv in cfg["warmup"]:  # imports torch, the model zoo, the data, so the cases' times are their own
        call(argv)
    with open(cfg["results"], "a") as results:
        for argv in cfg["cases"]:
            rc, out, err, seconds = call(argv)
            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak so far, MiB
            results.write(json.dumps({"argv": argv, "rc": rc, "stdout": out[-2000:], "stderr": err[-20000:],
                                      "seconds": seconds, "maxrss_mib": maxrss}) + "\n")
            results.flush()


if __name__ == "__main__":
    _child()
