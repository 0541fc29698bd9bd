"""`--mix` on the command line: malformed specs are one line, exit 2, nothing written (in the style of
tests/test_cli_errors.py, all in one child process); `cnnlab augment --mix` writes its preview."""

from __future__ import annotations

import pytest
from cli_batch import SPEC, run_batch
from PIL import Image

TRAIN = ["train", "--data", "digits", "--model", SPEC, "--epochs", "1", "--quiet"]
AUGMENT = ["augment", "--data", "digits", "--n", "3", "--copies", "3"]
BAD = {  # argv -> a word the message must hold
    (*TRAIN, "--mix", "cutmix:-1", "--out", "run-a"): "alpha=-1",
    (*TRAIN, "--mix", "mixup:0.2,cutmix:1.0:p=1.5", "--out", "run-b"): "p=1.5",
    (*TRAIN, "--mix", "mixup:p=0.7,cutmix:p=0.7", "--out", "run-c"): "add up to",
    (*TRAIN, "--mix", "mixp:0.2", "--out", "run-d"): "did you mean 'mixup'",
    (*TRAIN, "--mix", "mixup:0.2,", "--out", "run-e"): "empty",
    (*TRAIN, "--augment", "randaugment:n=2:m=31", "--out", "run-f"): "m=31",
    (*AUGMENT, "--mix", "cutmix:-1", "--out", "bad.png"): "alpha=-1",
    (*AUGMENT, "--augment", "trivial:bins=1", "--out", "bad2.png"): "bins=1",
}
GOOD = (*AUGMENT, "--augment", "trivial", "--mix", "mixup:0.2,cutmix:1.0", "--out", "good.png")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixcli")
    out = run_batch([list(a) for a in (*BAD, GOOD)], str(root), memory_gib=4, seconds_per_case=60,
                    warmup=[["data", "get", "digits"]])
    return root, {tuple(r["argv"]): r for r in out}


@pytest.mark.parametrize("argv", list(BAD), ids=lambda a: " ".join(a[-4:]))
def test_malformed_mix_is_one_line_exit_2_and_writes_nothing(results, argv):
    root, by_argv = results
    r = by_argv[argv]
    assert "Traceback" not in r["stderr"] and r["rc"] == 2, r["stderr"]
    lines = r["stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cnnlab {argv[0]}") and BAD[argv] in lines[0], r["stderr"]
    assert not (root / argv[-1]).exists()


def test_augment_preview_with_mix_writes_a_png(results):
    root, by_argv = results
    r = by_argv[GOOD]
    assert r["rc"] == 0, r["stderr"]
    assert "mixed by 'mixup:0.2:p=0.5,cutmix:1:p=0.5'" in r["stdout"]
    with Image.open(root / "good.png") as im:
        assert im.mode == "RGB" and im.width > im.height  # 3 rows of 1 + 3 cells
        colours = im.getcolors(1 << 16)
    assert any(r > 200 and g < 60 and b < 60 for _, (r, g, b) in colours)  # a red CutMix box outline
