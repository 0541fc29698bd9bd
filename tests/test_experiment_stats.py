"""Seeds and intervals: the t-interval arithmetic against scipy.stats, the verdict rule on constructed results,
and selection on a validation split that never sees the test set."""

from __future__ import annotations

import math

import pytest
import torch

from cnnlab.core import stats
from cnnlab.core.stats import CONTRADICTED, INCONCLUSIVE, SUPPORTED, check, combine, exact, paired, summarize

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("df", [1, 2, 3, 4, 9, 29, 200])
@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995])
def test_t_quantile_and_cdf_match_scipy(df, p):
    assert stats.t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-9)
    assert stats.t_quantile(1 - p, df) == pytest.approx(scipy_stats.t.ppf(1 - p, df), rel=1e-9)
    for t in (-3.1, -0.4, 0.0, 0.7, 2.5, 12.0):
        assert stats.t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), abs=1e-12)


def test_t_quantile_by_hand():
    # the textbook table: t(0.975, 2) = 4.303, t(0.975, 1) = 12.706 (and 1 df is Cauchy: tan(pi (p - 1/2)))
    assert stats.t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-6)
    assert stats.t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-10)


@pytest.mark.parametrize("values", [[0.871, 0.868, 0.880], [1.0, 2.0, 4.0, 8.0, 16.0], [0.5, 0.5001]])
def test_summary_matches_scipy_t_interval(values):
    s = summarize(values)
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    low, high = scipy_stats.t.interval(0.95, n - 1, loc=mean, scale=scipy_stats.sem(values))
    assert (s.n, s.mean, s.std) == (n, pytest.approx(mean, abs=1e-15), pytest.approx(std, rel=1e-12))
    assert (s.low, s.high) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))


def test_one_value_bounds_nothing_and_paired_differences():
    one = summarize([0.9])
    assert one.n == 1 and math.isnan(one.std) and one.low == -math.inf and one.high == math.inf
    assert one.to_dict()["low"] is None  # JSON-safe
    d = paired([0.90, 0.85, 0.88], [0.86, 0.84, 0.85])
    ref = scipy_stats.ttest_rel([0.90, 0.85, 0.88], [0.86, 0.84, 0.85])
    assert d.mean == pytest.approx(0.08 / 3)
    # the interval excludes 0 exactly when the paired t-test's two-sided p-value is below 5%
    assert (d.low > 0) == (ref.pvalue < 0.05)
    with pytest.raises(ValueError):
        paired([1.0], [1.0, 2.0])


def test_verdict_rule_on_constructed_results():
    base = [0.860, 0.850, 0.870, 0.855, 0.865]
    better = [b + 0.02 + e for b, e in zip(base, [0.001, -0.002, 0.0, 0.002, -0.001], strict=True)]
    noisy = [b + e for b, e in zip(base, [0.03, -0.025, 0.01, -0.02, 0.01], strict=True)]
    # supported: +2 points every seed, tiny spread
    assert check("a > b", better, base).outcome == SUPPORTED
    # contradicted: the same data with the claim reversed
    assert check("b > a", base, better).outcome == CONTRADICTED
    # inconclusive: the sign of the mean is right but the interval straddles zero
    c = check("noisy > b", noisy, base)
    assert c.interval.mean > 0 and c.interval.low < 0 < c.interval.high and c.outcome == INCONCLUSIVE
    # inconclusive with one seed, whatever the difference
    assert check("a > b", better[:1], base[:1]).outcome == INCONCLUSIVE
    # a threshold: 'drop of at most one point' is 'b - a > -0.01'
    assert check("little cost", [x - 0.002 for x in base], base, threshold=-0.01).outcome == SUPPORTED
    assert check("little cost", [x - 0.05 for x in base], base, threshold=-0.01).outcome == CONTRADICTED


def test_combine_and_exact_facts():
    yes, no, maybe = exact("rf", True), exact("rf", False), check("x", [0.1], [0.0])
    assert combine([yes, yes]) == SUPPORTED
    assert combine([yes, maybe]) == INCONCLUSIVE
    assert combine([yes, maybe, no]) == CONTRADICTED
    assert combine([]) == INCONCLUSIVE
    assert [stats.as_supported(o) for o in (SUPPORTED, CONTRADICTED, INCONCLUSIVE)] == [True, False, None]


def test_interval_text():
    s = summarize([0.871, 0.868, 0.880])
    text = s.text(".2%")
    assert text.startswith("87.30% ± 0.62 [") and text.endswith("]")
    assert summarize([0.5]).text(".2%") == "50.00%"


def test_verdict_words_and_quick_is_inconclusive_at_quick_size():
    from cnnlab.experiments._base import resolve_size, verdict_text

    assert verdict_text(None, quick=True) == "inconclusive at quick size"
    assert verdict_text(None, quick=False) == "inconclusive at this budget"
    assert verdict_text(False, quick=False) == "contradicted"
    assert resolve_size(True, None, None) == ("quick", 1)
    assert resolve_size(False, None, None) == ("default", 3)
    assert resolve_size(False, "large", 2) == ("large", 2)


def _toy(n_per_class: int = 40, classes: int = 3, seed: int = 0):
    from cnnlab.data.dataset import in_memory_dataset

    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes * n_per_class) % classes
    images = torch.randint(0, 60, (len(labels), 1, 8, 8), generator=g, dtype=torch.uint8)
    images[:, 0, :4, :4] += (labels * 60).to(torch.uint8).view(-1, 1, 1)  # the class is a bright corner
    test_labels = torch.arange(classes * 10) % classes
    test = torch.randint(0, 60, (len(test_labels), 1, 8, 8), generator=g, dtype=torch.uint8)
    test[:, 0, :4, :4] += (test_labels * 60).to(torch.uint8).view(-1, 1, 1)
    return in_memory_dataset("toy", [f"c{i}" for i in range(classes)], "test", (images, labels), (test, test_labels))


def test_validation_split_is_disjoint_stratified_and_test_cannot_change_selection():
    from cnnlab.data.dataset import in_memory_dataset
    from cnnlab.experiments._common import fit_selected, with_validation

    ds = _toy()
    split = with_validation(ds, 0.1, seed=3)
    assert torch.bincount(split.val.labels).tolist() == [4, 4, 4]
    assert torch.bincount(split.train.labels).tolist() == [36, 36, 36]
    # disjoint: every original image lands in exactly one of the two (images are unique with overwhelming odds)
    rows = {tuple(x.flatten().tolist()) for x in torch.cat([split.train.images, split.val.images])}
    assert len(rows) == len(ds.train) == len(split.train) + len(split.val)

    opts = dict(epochs=4, batch_size=16, lr=2e-2, optimizer="adamw", seed=0, device="cpu", val_fraction=0.2)
    a = fit_selected("fc16 fc3", ds, **opts)
    shuffled = ds.test.labels[torch.randperm(len(ds.test.labels), generator=torch.Generator().manual_seed(9))]
    ds2 = in_memory_dataset("toy", ds.classes, "test", (ds.train.images, ds.train.labels), (ds.test.images, shuffled))
    b = fit_selected("fc16 fc3", ds2, **opts)
    assert a.best_epoch == b.best_epoch and a.val_curve == b.val_curve
    for (ka, va), (kb, vb) in zip(a.result.model.state_dict().items(), b.result.model.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    assert 1 <= a.best_epoch <= a.epochs_run == 4
