"""Issue 15: the CLI under a few hundred generated bad command lines, every subcommand.

Each command line is a valid base with one to three of its arguments replaced by values drawn (seeded)
from tables of bad values: out-of-range and malformed numbers, paths that are files, folders, missing,
unwritable or damaged run folders, specs that are malformed or enormous, unknown names, unknown flags.
All run in one child process capped at 4 GiB of address space (tests/cli_batch.py). Every one must end
with exit 0 or 2, no traceback, within its time limit, without the child dying.
"""

from __future__ import annotations

import random

import pytest
import torch
from cli_batch import SPEC, run_batch, write_run
from PIL import Image

SEED, COUNT = 15, 300

BAD_INT = ["-1", "0", "x", "", "1.5", "nan", "1e9", "99999999999999999999", "9" * 40, "0x10", "--", "٣"]
BAD_FLOAT = ["nan", "inf", "-inf", "-1", "x", "", "1e400", "1e-400x", "1e309"]
BAD_PATH = ["/nonexistent/x", "/proc/cnnlab-x", "a-file", "a-file/sub", "a-folder", "", "/dev/null", "bad-card",
            "no-weights", "a-folder/../a-file", "\x7f", "x" * 300]
BAD_RUN = ["/nonexistent", "a-file", "a-folder", "bad-card", "bad-config", "mismatch", "list-card", "no-weights",
           "bad-metrics", "tampered", ""]
BAD_IMAGE = ["a-file", "a-folder", "/nonexistent.png", "bomb.png", "text.png", "/dev/null", ""]
BAD_SPEC = ["conv3x3-32*100000", "(conv3x3-32)*70/double fc10", "fc99999999", "((conv3x3-8*100)*100)*100",
            "conv0x0-1", "(", ")", "conv3x3-32/s0", "conv3x3-", "relu", "softmax fc10", "conv9" + "9" * 60 + "x3-3",
            "fc10 conv3x3-3", "gap gap fc10", "dropout1.5 fc10", "local3x3-99999 fc10", "maxpool4096 fc10",
            "conv3x3-8/pool9 fc10", "conv3x3-8 tanh", "resnet", "vgg_like fc10", "", " ", "((conv3x3-8)*3)*3/double/double",
            "conv3x3-8/d4096 fc10", "conv4096x4096-1 fc10", "avgpool2/p9 fc10"]
BAD_NAME = ["nope", "", "../..", "imagefolder:/nonexistent", "imagefolder:/proc/self", "imagefolder:a-file",
            "FASHION-MNIST", "digits ", "mnist\x00"]
BAD_SIZE = ["1x8", "0x8x8", "1x8x8x8", "axbxc", "1x" + "9" * 50 + "x8", "-1x8x8", "1X99999999X8", "", "3x224"]
BAD_PIPE = ["flip,bogus", "crop:-4", "scale:2-1", "erase:9", "crop:4:mode=nope", "lecture,", ",", "flip:p=2",
            "exposure:nan", "x" * 200]
BAD_OPTION = ["width=1000000", "n=100000", "m=99", "x", "=", "width=", "width=-1", "hidden=(10**9,)",
              "dropout=2", "nope=1", "width='a'"]
GARBAGE = ["--nope", "-x", "--", "-", "--help=1", "✓", "--out", "train", "--version=2", "-h-h", "%s%n"]

# subcommand: (base command line, {flag: pool of bad values}); positional slots are named "@i" (index in base)
TABLE = {
    "summary": (["summary", SPEC], {"@1": BAD_SPEC, "--input": BAD_SIZE, "--num-classes": BAD_INT}),
    "models": (["models", "resnet*"], {"@1": ["[", "*" * 500, "nope", ""], "--json": None}),
    "arithmetic-connectivity": (["arithmetic", "connectivity"], {"--input": BAD_SIZE, "--kernel": BAD_INT,
                                "--out-channels": BAD_INT, "--stride": BAD_INT, "--padding": BAD_INT}),
    "arithmetic-bottleneck": (["arithmetic", "bottleneck"], {"--channels": BAD_INT, "--mid": BAD_INT,
                              "--kernel": BAD_INT, "--spatial": BAD_INT}),
    "arithmetic-rf": (["arithmetic", "rf"], {"--kernel": BAD_INT, "--layers": BAD_INT, "--stride": BAD_INT,
                      "--dilation": BAD_INT}),
    "data-get": (["data", "get", "digits"], {"@2": BAD_NAME, "--image-size": BAD_INT, "--data-dir": BAD_PATH}),
    "data-list": (["data", "list"], {"--data-dir": BAD_PATH}),
    "train": (["train", "--data", "digits", "--model", SPEC, "--epochs", "1", "--out", "run-new"],
              {"--model": BAD_SPEC, "--epochs": BAD_INT, "--batch-size": BAD_INT, "--lr": BAD_FLOAT,
               "--image-size": BAD_INT, "--config": BAD_PATH + ["broken.toml", "types.toml"], "--resume": BAD_RUN,
               "--out": BAD_PATH, "--augment": BAD_PIPE, "--optimizer": BAD_NAME, "--seed": BAD_INT,
               "--momentum": BAD_FLOAT, "--warmup": BAD_FLOAT, "--val-fraction": BAD_FLOAT, "--data": BAD_NAME,
               "--model-option": BAD_OPTION, "--nproc": BAD_INT, "--tta": BAD_NAME, "--precision": BAD_NAME,
               "--eval-every": BAD_INT, "--label-smoothing": BAD_FLOAT, "--recipe": BAD_NAME}),
    "eval": (["eval", "good"], {"@1": BAD_RUN, "--split": BAD_NAME, "--tta": BAD_NAME, "--data": BAD_NAME,
                                "--weights": BAD_NAME}),
    "predict": (["predict", "good", "img.png"], {"@1": BAD_RUN, "@2": BAD_IMAGE, "--top-k": BAD_INT,
                                                 "--tta": BAD_NAME}),
    "export": (["export", "good"], {"@1": BAD_RUN, "--format": BAD_NAME, "--opset": BAD_INT, "--out": BAD_PATH}),
    "report": (["report", "good", "--out", "r.html"], {"@1": BAD_RUN, "--out": BAD_PATH, "--errors": BAD_INT}),
    "show-filters": (["show", "filters", "good", "--out", "f.png"], {"@2": BAD_RUN, "--out": BAD_PATH}),
    "show-features": (["show", "features", "good", "img.png", "--out", "f.png"],
                      {"@2": BAD_RUN, "@3": BAD_IMAGE, "--channels": BAD_INT, "--layers": ["nope", "", "features.99"]}),
    "show-saliency": (["show", "saliency", "good", "img.png", "--out", "s.png"],
                      {"@2": BAD_RUN, "@3": BAD_IMAGE, "--layer": ["nope", "", "classifier"], "--method": BAD_NAME}),
    "augment": (["augment", "--data", "digits", "--out", "g.png", "--n", "2", "--copies", "1"],
                {"--augment": BAD_PIPE, "--out": BAD_PATH + ["g.txt"], "--n": BAD_INT, "--copies": BAD_INT,
                 "--data": BAD_NAME}),
    "lr-find": (["lr-find", "--data", "digits", "--model", SPEC, "--steps", "5", "--out", "lr.png"],
                {"--model": BAD_SPEC, "--steps": BAD_INT, "--batch-size": BAD_INT, "--start-lr": BAD_FLOAT,
                 "--end-lr": BAD_FLOAT, "--optimizer": BAD_NAME, "--out": BAD_PATH, "--data": BAD_NAME}),
    "gradients": (["gradients", "--models", "plain20", "--data", "digits", "--steps", "1", "--out", "grad"],
                  {"--models": ["nope", ",", "", "plain20,nope", SPEC], "--steps": BAD_INT, "--batch-size": BAD_INT,
                   "--activation": BAD_NAME, "--init-scale": BAD_FLOAT, "--out": BAD_PATH, "--data": BAD_NAME}),
    "transfer": (["transfer", "--backbone", "good", "--data", "digits", "--strategy", "features", "--no-baselines"],
                 {"--backbone": BAD_RUN + ["nope:imagenet", "resnet18:/nonexistent.pth", "resnet18:a-file"],
                  "--strategy": BAD_NAME, "--head": BAD_NAME, "--layer": ["nope", ""], "--train-per-class": BAD_INT,
                  "--steps": BAD_INT, "--image-size": BAD_INT, "--out": BAD_PATH, "--data": BAD_NAME}),
    "experiment": (["experiment", "list"], {"@1": BAD_NAME, "--out": BAD_PATH, "--seed": BAD_INT}),
    "native": (["native", "build"], {"@1": BAD_NAME}),
    "average": (["average", "good", "--last", "3"], {"@1": BAD_RUN, "--last": BAD_INT}),
    "calibrate": (["calibrate", "good"], {"@1": BAD_RUN}),
    "compare": (["compare", "good", "good", "--out", "c.png"], {"@1": BAD_RUN, "@2": BAD_RUN, "--out": BAD_PATH}),
    "serve": (["serve", "good", "--port", "-1"], {"@1": BAD_RUN, "--top-k": BAD_INT}),  # a valid serve would listen
    "demo": (["demo", "--epochs", "-1"], {"--epochs": BAD_INT, "--out": BAD_PATH}),  # a valid demo trains a minute
}

def generate(seed: int = SEED, count: int = COUNT) -> list[list[str]]:
    rng = random.Random(seed)
    cases, names = [], sorted(TABLE)
    while len(cases) < count:
        name = names[len(cases) % len(names)]
        argv, slots = TABLE[name]
        argv = list(argv)
        flags = [f for f in slots if slots[f] is not None]
        for flag in rng.sample(flags, k=min(len(flags), rng.choice((1, 1, 2, 3)))):
            value = rng.choice(slots[flag])
            if flag.startswith("@"):
                argv[int(flag[1:])] = value
            elif flag in argv:
                argv[argv.index(flag) + 1] = value
            else:
                argv += [flag, value]
        if rng.random() < 0.1:  # an unknown flag or a stray word somewhere
            argv.insert(rng.randrange(1, len(argv) + 1), rng.choice(GARBAGE))
        if name in ("demo", "train", "lr-find", "gradients", "transfer") and argv == TABLE[name][0]:
            continue  # every mutation happened to be valid
        cases.append(argv)
    return cases


@pytest.mark.slow
def test_generated_bad_command_lines_end_in_0_or_2_without_traceback(tmp_path):
    write_run(tmp_path / "good")
    write_run(tmp_path / "mismatch", card_spec="conv3x3-8 maxpool2 fc10")
    write_run(tmp_path / "tampered", card_spec="conv3x3-8 maxpool2 fc99999999")
    for name, file, text in (("bad-card", "best.json", '{"model"'), ("bad-config", "config.json", "[1"),
                             ("list-card", "best.json", "[]"), ("bad-metrics", "metrics.jsonl", "{\n")):
        write_run(tmp_path / name)
        (tmp_path / name / file).write_text(text)
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "best.json").write_text("{}")
    (tmp_path / "a-file").write_text("mine")
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "text.png").write_text("not a png")
    (tmp_path / "broken.toml").write_text("epochs = [\n")
    (tmp_path / "types.toml").write_text('epochs = "x"\nextra = 3\n')
    Image.new("L", (8, 8), 0).save(tmp_path / "img.png")
    Image.new("L", (20_000, 20_000), 0).save(tmp_path / "bomb.png")

    cases = generate()
    results = run_batch(cases, str(tmp_path), memory_gib=4, seconds_per_case=60,
                        warmup=[["summary", SPEC], ["data", "get", "digits"]])
    torch.manual_seed(0)
    bad = []
    for r in results:
        ok = r["rc"] in (0, 2) and "Traceback" not in r["stderr"]
        if not ok:
            bad.append(f"{r['argv']!r}: exit {r['rc']}, {r['seconds'] or 0:.1f} s\n{r['stderr'][-1200:]}")
    assert not bad, f"{len(bad)} of {len(cases)} command lines failed:\n\n" + "\n\n".join(bad[:10])
    assert max(r["maxrss_mib"] for r in results) < 4096


def test_the_generated_cases_cover_every_subcommand():
    import cnnlab.cli.main as cli

    commands = {a.dest for a in cli.build_parser()._subparsers._group_actions[0]._choices_actions}
    commands |= set(cli.build_parser()._subparsers._group_actions[0].choices)
    covered = {argv[0] for argv in generate()}
    assert commands <= covered, f"not fuzzed: {sorted(commands - covered)}"
    assert len(generate()) == COUNT and generate() == generate()  # seeded: the same cases every run
