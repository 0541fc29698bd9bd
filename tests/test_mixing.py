"""MixUp / CutMix per sample (cnnlab.augment.mixing): each sample against torchvision.transforms.v2's
MixUp / CutMix given the same λ (and box centre), Beta statistics, the --mix grammar, soft targets with
label smoothing through the one TrainStep (hand-computed), and training / resume with mixing."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import Crash, StopAt
from torch import nn
from torchvision.transforms import v2

from cnnlab.augment import parse_mix
from cnnlab.augment.mixing import CUTMIX, MIXUP, NONE
from cnnlab.data.dataset import in_memory_dataset
from cnnlab.errors import CnnlabError
from cnnlab.training import TrainConfig, Trainer, TrainStep, train
from cnnlab.training.precision import resolve_precision

K = 5


def batch(n: int = 24, c: int = 3, h: int = 12, w: int = 10):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, c, h, w, generator=g), torch.randint(0, K, (n,), generator=g)


class _Fixed:
    """Stands in for torchvision's Beta distribution: returns the λ we drew."""

    def __init__(self, lam: float):
        self.lam = lam

    def sample(self, shape):
        return torch.tensor(self.lam, dtype=torch.float64)


def test_mixup_per_sample_equals_torchvision_mixup_at_that_lambda():
    x, y = batch()
    mix = parse_mix("mixup:0.4")
    params = mix.sample(x.shape, torch.Generator().manual_seed(1))
    out, targets = mix.apply(x, params), mix.targets(y, params, K)
    assert (params["method"] == MIXUP).all() and len(torch.unique(params["lam"])) == len(x)  # a λ per sample
    for i in range(len(x)):
        j = int(params["partner"][i])
        assert j == (i - 1) % len(x)  # torchvision's pairing: roll(1)
        tv = v2.MixUp(alpha=0.4, num_classes=K)
        tv._dist = _Fixed(float(params["lam"][i]))
        ref_x, ref_y = tv(torch.stack([x[j], x[i]]), torch.stack([y[j], y[i]]))  # roll(1) mixes x[i] with x[j]
        assert torch.equal(out[i], ref_x[1]), i
        torch.testing.assert_close(targets[i], ref_y[1], rtol=0, atol=1e-7)


def test_cutmix_per_sample_equals_torchvision_cutmix_at_that_lambda_and_centre(monkeypatch):
    x, y = batch(40)
    mix = parse_mix("cutmix:1.0")
    params = mix.sample(x.shape, torch.Generator().manual_seed(2))
    out, targets = mix.apply(x, params), mix.targets(y, params, K)
    areas = ((params["bottom"] - params["top"]) * (params["right"] - params["left"])).tolist()
    assert len(set(areas)) > 10  # a box per sample
    for i in range(len(x)):
        j = int(params["partner"][i])
        draws = [torch.tensor([int(params["cx"][i])]), torch.tensor([int(params["cy"][i])])]  # r_x then r_y
        monkeypatch.setattr(torch, "randint", lambda *a, d=draws, **k: d.pop(0))
        tv = v2.CutMix(alpha=1.0, num_classes=K)
        tv._dist = _Fixed(float(params["beta"][i]))
        ref_x, ref_y = tv(torch.stack([x[j], x[i]]), torch.stack([y[j], y[i]]))
        monkeypatch.undo()
        assert torch.equal(out[i], ref_x[1]), i
        torch.testing.assert_close(targets[i], ref_y[1], rtol=0, atol=1e-7)


def test_lambda_follows_beta_alpha_alpha():
    """Beta(α, α): mean 1/2, variance 1 / (4 (2α + 1))."""
    for alpha in (0.2, 1.0):
        lam = parse_mix(f"mixup:{alpha}").sample((20_000, 1, 4, 4), torch.Generator().manual_seed(0))["lam"]
        assert abs(lam.mean().item() - 0.5) < 0.01
        assert abs(lam.var().item() - 1 / (4 * (2 * alpha + 1))) < 0.01


def test_cutmix_box_area_matches_the_corrected_lambda_and_pixels():
    x, _ = batch(64, 1, 16, 16)
    mix = parse_mix("cutmix")
    params = mix.sample(x.shape, torch.Generator().manual_seed(4))
    out = mix.apply(x, params)
    from_partner = (out != x).float().mean(dim=(1, 2, 3))  # random images: a pasted pixel differs
    torch.testing.assert_close(from_partner, (1 - params["lam"]).float(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("text,p_mixup,p_cutmix", [
    ("mixup:0.2", 1.0, 0.0), ("cutmix:1.0", 0.0, 1.0), ("mixup:0.2,cutmix:1.0", 0.5, 0.5),
    ("mixup:0.2,cutmix:1.0:p=0.5", 0.5, 0.5), ("mixup:0.2,cutmix:1.0:p=0.8", 0.2, 0.8),
    ("cutmix:1.0:p=0.5", 0.0, 0.5), ("mixup:p=0.3,cutmix:alpha=2:p=0.3", 0.3, 0.3),
])
def test_each_sample_draws_one_method_with_the_grammars_probabilities(text, p_mixup, p_cutmix):
    mix = parse_mix(text)
    method = mix.sample((20_000, 1, 8, 8), torch.Generator().manual_seed(0))["method"]
    assert abs((method == MIXUP).float().mean().item() - p_mixup) < 0.015
    assert abs((method == CUTMIX).float().mean().item() - p_cutmix) < 0.015
    assert parse_mix(str(mix)) == mix  # the canonical string parses back


def test_unmixed_samples_are_left_as_they_are():
    x, y = batch(200)
    mix = parse_mix("cutmix:1.0:p=0.5")
    params = mix.sample(x.shape, torch.Generator().manual_seed(0))
    out, targets = mix.apply(x, params), mix.targets(y, params, K)
    keep = params["method"] == NONE
    assert 60 < int(keep.sum()) < 140
    assert torch.equal(out[keep], x[keep]) and torch.equal(targets[keep], F.one_hot(y[keep], K).float())


@pytest.mark.parametrize("text,word", [
    ("cutmix:-1", "alpha=-1"), ("cutmix:0", "alpha=0"), ("mixup:nan", "alpha=nan"), ("mixup:abc", "'abc'"),
    ("cutmx:1", "did you mean 'cutmix'"), ("mixup:0.2:p=1.5", "p=1.5"), ("mixup:p=0.7,cutmix:p=0.6", "add up to 1.3"),
    ("mixup,mixup", "twice"), ("mixup:0.2:q=1", "'q'"), ("mixup:0.2:0.3", "needs a name"), ("mixup,,cutmix", "empty"),
    ("mixup:alpha=1:alpha=2", "twice"),
])
def test_malformed_specs_are_one_line_errors(text, word):
    with pytest.raises(CnnlabError) as e:
        parse_mix(text)
    assert word in str(e.value) and "\n" not in str(e.value)


def test_none_and_channels_last():
    assert parse_mix("none") is None and parse_mix("") is None and parse_mix(None) is None
    x, y = batch()
    x = x.contiguous(memory_format=torch.channels_last)
    out, _ = parse_mix("mixup:0.2,cutmix:1")(x, y, torch.Generator(), K)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_step_with_soft_targets_is_smoothed_soft_cross_entropy():
    """Hand-computed: q' = (1 - ε) q + ε / K; loss = mean -Σ q' log softmax; also λ CE_ε(a) + (1 - λ) CE_ε(b)."""
    torch.manual_seed(0)
    net = nn.Linear(6, K)
    ref = copy.deepcopy(net)
    x, a, b = torch.randn(10, 6), torch.randint(0, K, (10,)), torch.randint(0, K, (10,))
    lam = torch.rand(10)
    q = lam[:, None] * F.one_hot(a, K) + (1 - lam[:, None]) * F.one_hot(b, K)
    step = TrainStep(net, torch.optim.SGD(net.parameters(), lr=0.1), resolve_precision("fp32", "cpu", False),
                     label_smoothing=0.1)
    out = step(x, q, 0)
    logp = torch.log_softmax(ref(x), 1)
    hand = -(((1 - 0.1) * q + 0.1 / K) * logp).sum(1).mean()
    assert float(out.loss) == pytest.approx(float(hand.detach()), rel=1e-6)
    pairwise = (lam * F.cross_entropy(ref(x), a, reduction="none", label_smoothing=0.1)
                + (1 - lam) * F.cross_entropy(ref(x), b, reduction="none", label_smoothing=0.1)).mean()
    assert float(out.loss) == pytest.approx(float(pairwise.detach()), rel=1e-6)
    assert torch.equal(out.labels, torch.where(lam >= 0.5, a, b) if (a != b).all() else q.argmax(1))  # dominant


def _data():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(96) % 3
    images = (torch.rand(96, 1, 8, 8, generator=g) * 60 + labels.view(-1, 1, 1, 1) * 80).to(torch.uint8)
    return in_memory_dataset("bands", ["a", "b", "c"], "test", (images, labels), (images[:30], labels[:30]))


OPTS = dict(model="conv3x3-4 maxpool2 fc3", batch_size=16, precision="fp32", device="cpu", lr=3e-3, seed=1)


def test_training_with_mix_learns_in_memory():
    """The classes are separable by brightness: trained on mixed batches, the model still tells them apart."""
    result = Trainer(TrainConfig(**OPTS, epochs=5, mix="mixup:0.4,cutmix:1.0"), data=_data(), save=False, quiet=True).fit()
    assert result.history[-1]["test_accuracy"] > 0.6 and 0 < result.history[-1]["train_accuracy"] <= 1


@pytest.mark.slow
def test_resume_with_mix_is_bit_exact(tmp_path):
    """Stopped mid-epoch and resumed, the weights equal an uninterrupted run's (the mixing draws come from
    the checkpointed generator)."""
    full = train(data=_data(), epochs=2, mix="cutmix:1.0:p=0.7", out=str(tmp_path / "a"), verbose=False,
                 plots=False, **OPTS)

    with pytest.raises(Crash):
        train(data=_data(), epochs=2, mix="cutmix:1.0:p=0.7", out=str(tmp_path / "b"), verbose=False, plots=False,
              checkpoint_every=3, callbacks=[StopAt(1, 4)], **OPTS)
    resumed = train(data=_data(), resume=str(tmp_path / "b"), verbose=False, plots=False)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert resumed.config.mix == "cutmix:1.0:p=0.7"


def test_seeded_draws_repeat():
    x, y = batch()
    mix = parse_mix("mixup:0.2,cutmix:1.0")
    a = mix(x, y, torch.Generator().manual_seed(9), K)
    b = mix(x, y, torch.Generator().manual_seed(9), K)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not np.array_equal(a[0].numpy(), mix(x, y, torch.Generator().manual_seed(10), K)[0].numpy())
