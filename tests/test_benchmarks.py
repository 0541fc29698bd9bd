"""The benchmarks' baselines are what they claim to be."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from cnnlab.models import create_model


def _load(name: str):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plain_loop_trains_the_lecture_cnn_in_plain_pytorch():
    bench = _load("train_speed")
    torch.manual_seed(0)
    plain = bench.plain_simple_cnn()
    torch.manual_seed(0)
    ours = create_model("simple_cnn")
    assert all(type(m).__module__.startswith("torch.nn") for m in plain.modules())  # no cnnlab layers
    assert [p.shape for p in plain.parameters()] == [p.shape for p in ours.parameters()]
    for a, b in zip(plain.parameters(), ours.parameters(), strict=True):
        assert torch.equal(a, b)  # the same initial weights for the same seed
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(plain(x), ours(x))


def test_every_trick_arm_changes_one_valid_option_of_its_recipe():
    from cnnlab.training import TrainConfig  # noqa: PLC0415
    from cnnlab.training.recipes import recipe_options  # noqa: PLC0415

    bench = _load("tricks")
    for recipe, arms in bench.ARMS.items():
        base_epochs, base = bench.arm_options(recipe, {})
        assert base == {k: v for k, v in recipe_options(recipe).items() if k != "epochs"}
        for name, (_what, changes) in arms.items():
            epochs, opts = bench.arm_options(recipe, changes)
            assert epochs == base_epochs
            TrainConfig(**opts, epochs=epochs).resolved()  # refuses an unknown or invalid option
            differ = {k for k in opts if opts[k] != base.get(k)}
            assert len(differ) == 1, (recipe, name, differ)
            if "extra" in differ:
                assert len({k for k in opts["extra"] if opts["extra"][k] != base["extra"].get(k)}) == 1
