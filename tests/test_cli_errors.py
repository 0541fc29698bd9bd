"""Issue 15, class 7: an ordinary mistake is one line naming the file and what to do, exit 2, no traceback.

Each class of the 25 tracebacks found gets a test; all the command lines run in one child process
(tests/cli_batch.py), as `cnnlab` would run them. Before the fix each of these printed a traceback
(exit 1), and an unwritable --out was found only after the work.
"""

from __future__ import annotations

import json

import pytest
import torch
from cli_batch import SPEC, run_batch, write_run
from PIL import Image

CASES = {
    "unwritable_out": [
        ["train", "--data", "digits", "--model", SPEC, "--epochs", "1", "--out", "/proc/cnnlab-run"],
        ["export", "good", "--out", "/proc/model.onnx"],
        ["report", "good", "--out", "/proc/report.html"],
        ["gradients", "--models", "plain20", "--data", "digits", "--steps", "1", "--out", "/proc/g"],
        ["augment", "--data", "digits", "--out", "/proc/grid.png"],
    ],
    "existing_out_path": [
        ["train", "--data", "digits", "--model", SPEC, "--epochs", "1", "--out", "a-file"],
        ["train", "--data", "digits", "--model", SPEC, "--epochs", "1", "--out", "a-file/run"],
        ["export", "good", "--out", "a-file/model.onnx"],
        ["show", "filters", "good", "--out", "a-folder"],
    ],
    "malformed_json_in_run_folder": [
        ["eval", "bad-card-json"], ["predict", "bad-config-json", "img.png"], ["report", "bad-metrics", "--out", "r.html"],
        ["eval", "card-is-a-list"],
    ],
    "malformed_toml": [["train", "--config", "broken.toml", "--data", "digits"]],
    "wrong_keys": [["train", "--config", "unknown-key.toml", "--data", "digits"], ["eval", "card-wrong-keys"]],
    "wrong_types_in_toml": [
        ["train", "--config", "types-epochs.toml", "--data", "digits"],
        ["train", "--config", "types-extra.toml", "--data", "digits"],
        ["train", "--config", "types-model.toml", "--data", "digits"],
    ],
    "weight_shape_mismatch": [["eval", "mismatch"], ["predict", "mismatch", "img.png"]],
    "decompression_bomb": [["predict", "good", "bomb.png"]],
}

# what each class's message must name
NAMES = {
    "unwritable_out": "/proc/", "existing_out_path": "a-f", "malformed_json_in_run_folder": ".json",
    "malformed_toml": "broken.toml", "wrong_keys": "", "wrong_types_in_toml": ".toml",
    "weight_shape_mismatch": "mismatch", "decompression_bomb": "bomb.png",
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    good = write_run(root / "good")
    write_run(root / "mismatch", card_spec="conv3x3-8 maxpool2 fc10")  # the card names 8 channels, the weights hold 4
    for name, file, text in (("bad-card-json", "best.json", '{"model": '), ("bad-config-json", "config.json", "not json"),
                             ("bad-metrics", "metrics.jsonl", '{"epoch": 1}\n{broken\n'), ("card-is-a-list", "best.json", "[1, 2]")):
        write_run(root / name)
        (root / name / file).write_text(text)
    card = json.loads((good / "best.json").read_text())
    del card["classes"]
    write_run(root / "card-wrong-keys")
    (root / "card-wrong-keys" / "best.json").write_text(json.dumps({**card, "colour": "red"}))
    (root / "a-file").write_text("mine")
    (root / "a-folder").mkdir()
    (root / "broken.toml").write_text("epochs = [\n")
    (root / "unknown-key.toml").write_text("epochz = 3\n")
    (root / "types-epochs.toml").write_text('epochs = "five"\n')
    (root / "types-extra.toml").write_text("extra = 3\n")
    (root / "types-model.toml").write_text("model = 5\n")
    Image.new("L", (8, 8), 0).save(root / "img.png")
    Image.new("L", (20_000, 20_000), 0).save(root / "bomb.png")  # 4e8 pixels: above Pillow's bomb limit
    cases = [argv for group in CASES.values() for argv in group]
    out = run_batch(cases, str(root), memory_gib=4, seconds_per_case=60,
                    warmup=[["summary", SPEC], ["data", "get", "digits"]])
    assert not (root / "a-file" / "run").exists() and not list(root.glob("*cnnlab-run*"))
    torch.manual_seed(0)
    return {tuple(r["argv"]): r for r in out}


@pytest.mark.parametrize("kind", list(CASES))
def test_error_class_is_one_line_exit_2(results, kind):
    for argv in CASES[kind]:
        r = results[tuple(argv)]
        label = " ".join(argv)
        assert "Traceback" not in r["stderr"], f"{label}:\n{r['stderr']}"
        assert r["rc"] == 2, f"{label}: exit {r['rc']}: {r['stderr']}"
        lines = r["stderr"].strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"cnnlab {argv[0]}"), f"{label}: {r['stderr']}"
        assert NAMES[kind] in lines[0], f"{label}: the error does not name the file: {lines[0]}"
        if kind in ("unwritable_out", "existing_out_path"):  # found before any data is loaded or model trained
            assert r["seconds"] < 1.0, f"{label}: {r['seconds']:.1f} s before the error"
