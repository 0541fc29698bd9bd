"""The bottleneck experiment: the block's parameter counts are the lecture's, and a quick run writes valid results."""

from __future__ import annotations

import pytest
import torch
from conftest import check_experiment_files, needs_fashion
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.experiments import run_experiment
from cnnlab.experiments.bottleneck import BottleneckNet, block_conv_params


def test_block_parameters_equal_the_published_numbers():
    plain, bottle = BottleneckNet("plain"), BottleneckNet("bottleneck")
    assert block_conv_params(plain) == 589_824 == 256 * 256 * 3 * 3
    assert block_conv_params(bottle) == 69_632 == 256 * 64 + 64 * 64 * 3 * 3 + 64 * 256
    for model in (plain, bottle):  # bias-free convolutions, as the lecture counts them
        assert all(m.bias is None for m in model.block.modules() if isinstance(m, nn.Conv2d))
    # outside the block the two nets are identical
    stem = sum(p.numel() for n, p in plain.named_parameters() if not n.startswith("block."))
    assert stem == sum(p.numel() for n, p in bottle.named_parameters() if not n.startswith("block."))


def test_block_macs_match_hand_arithmetic():
    """Per image on the 7x7 map of a 28x28 input: every weight is used once per output position."""
    from cnnlab.experiments.bottleneck import _costs

    for kind, weights in (("plain", 589_824), ("bottleneck", 69_632)):
        assert _costs(BottleneckNet(kind), (1, 28, 28))["block_macs"] == 7 * 7 * weights


def test_blocks_keep_the_shape_and_train():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    for kind in ("plain", "bottleneck"):
        model = BottleneckNet(kind, num_classes=7)
        assert model.forward_features(x).shape == (2, 256, 7, 7)
        out = model(x)
        assert out.shape == (2, 7)
        out.square().sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with pytest.raises(CnnlabError, match="block must be one of"):
        BottleneckNet("basic")


@needs_fashion
@pytest.mark.slow
def test_bottleneck_quick(tmp_path):
    run_experiment("bottleneck", out=tmp_path, quick=True, progress=False)
    folder = tmp_path / "bottleneck"
    saved = check_experiment_files(folder)
    rows = saved["outcome"]["rows"]
    assert [r["block"] for r in rows] == ["plain", "bottleneck"]
    assert [r["block_params"] for r in rows] == [589_824, 69_632]
    assert [r["block_macs"] for r in rows] == [49 * 589_824, 49 * 69_632]
    for r in rows:
        assert 0.0 <= r["accuracy"]["mean"] <= 1.0 and r["train_s"]["mean"] > 0
    assert saved["verdict"] == "inconclusive"  # one seed: the non-inferiority interval is unbounded
    table = (folder / "table.md").read_text()
    assert "| plain | 589,824 |" in table and "| bottleneck | 69,632 |" in table
