"""Issue 15, class 3: no single argument can ask for unbounded memory or time.

Each oversized argument must be refused in one line (exit 2) in under a second, inside a process whose
address space is capped at 4 GiB: before the fix these built models with terabytes of weights on the CPU
(a meta-device build that overflowed fell back to a real one), looped 10^8 times, or expanded repeats
into 10^9 layers.
"""

from __future__ import annotations

import json

import pytest
from cli_batch import run_batch

RUN_CARD_FC = "conv3x3-8 maxpool2 fc99999999"

OVERSIZED = [
    ["summary", "(conv3x3-32)*70/double fc10"],  # 32 * 2^69 channels: 16 GB before, via the real-build fallback
    ["summary", "conv3x3-32*100000"],
    ["summary", "((conv3x3-32*1000)*1000)*1000"],
    ["summary", "(((relu)*2000)*2000)*2000"],
    ["summary", "fc99999999"],
    ["summary", "conv3x3-99999999999"],
    ["summary", "conv3x3-8 maxpool" + "9" * 5000],  # int() of a 5,000-digit string raises ValueError
    ["summary", "conv3x3-8", "--input", "1x" + "9" * 5000 + "x9"],
    ["arithmetic", "rf", "--layers", "100000000"],
    ["arithmetic", "rf", "--layers", "1000", "--stride", "999999999999"],
    ["arithmetic", "connectivity", "--input", "3x" + "9" * 5000 + "x3"],
    ["arithmetic", "bottleneck", "--channels", "9" * 4000, "--mid", "9" * 4000],
    ["train", "--data", "digits", "--image-size", "100000", "--out", "r1"],
    ["train", "--data", "digits", "--epochs", "100000000000000000000", "--out", "r2"],
    ["train", "--data", "digits", "--batch-size", "100000000000000000000", "--out", "r3"],
    ["train", "--data", "digits", "--model", "vgg_like", "--model-option", "width=1000000", "--out", "r4"],
    ["train", "--data", "digits", "--model", "vgg_like", "--model-option", "n=100000", "--out", "r5"],
    ["train", "--data", "digits", "--seed", "100000000000000000000", "--out", "r6"],
    ["data", "get", "digits", "--image-size", "100000"],
    ["transfer", "--backbone", "resnet18", "--data", "digits", "--image-size", "100000"],
    ["transfer", "--backbone", "resnet18", "--data", "digits", "--steps", "10000000000000"],
    ["augment", "--data", "digits", "--n", "1000000", "--out", "g.png"],
    ["eval", "tampered"],  # best.json names fc99999999: 7.8e10 parameters
    ["eval", "tampered-zoo"],  # best.json: vgg16 with 300,000 classes: 1.2e9 parameters
]


@pytest.fixture(scope="module")
def tampered(tmp_path_factory):
    """Two run folders whose best.json names models with 10^9-10^11 parameters (no weights needed: refused first)."""
    root = tmp_path_factory.mktemp("limits")
    card = {"model": "", "model_options": {}, "num_classes": 10, "classes": [str(i) for i in range(10)],
            "input_size": [1, 8, 8], "mean": [0.3], "std": [0.3], "dataset": "digits", "epoch": 1,
            "accuracy": 0.5, "format": "cnnlab-weights-1", "extra": {}}
    for name, model, classes in (("tampered", RUN_CARD_FC, 10), ("tampered-zoo", "vgg16", 300_000)):
        run = root / name
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"config": {}}))
        (run / "best.json").write_text(json.dumps({**card, "model": model, "num_classes": classes,
                                                   "classes": [str(i) for i in range(classes)]}))
        (run / "best.safetensors").write_bytes(b"")
    return root


@pytest.mark.slow
def test_each_oversized_argument_is_one_line_in_under_a_second_under_4_gib(tampered):
    results = run_batch(OVERSIZED, str(tampered), memory_gib=4, seconds_per_case=30,
                        warmup=[["summary", "conv3x3-4 maxpool2 fc10"], ["data", "get", "digits"]])
    for r in results:
        label = " ".join(a[:40] for a in r["argv"])
        assert r["rc"] == 2, f"{label}: exit {r['rc']}\n{r['stderr'][-1500:]}"
        assert "Traceback" not in r["stderr"], f"{label}:\n{r['stderr']}"
        lines = r["stderr"].strip().splitlines()
        assert len(lines) == 1 and "error" in lines[0], f"{label}: {r['stderr']}"
        assert r["seconds"] < 1.0, f"{label}: took {r['seconds']:.2f} s"
        assert len(lines[0]) < 600, f"{label}: the error repeats the argument: {lines[0][:200]}..."
