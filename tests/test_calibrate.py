"""`cnnlab calibrate`: temperature scaling, NLL / Brier / ECE, and the temperature used downstream.

Truth from outside the code under test: the measures computed by hand on four images, scipy's bounded
scalar minimiser for the fitted temperature (and a temperature planted in synthetic labels),
`torch.softmax(z / T)` for what predict and export return.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnnlab
from cnnlab.cli.main import main
from cnnlab.core.run import ModelCard, RunDir
from cnnlab.errors import CnnlabError
from cnnlab.training.calibrate import (
    brier,
    calibrate,
    ece,
    fit_temperature,
    measures,
    nll,
    reliability_bins,
    temper,
)
from cnnlab.training.evaluate import evaluate
from cnnlab.training.predict import predict
from cnnlab.training.run import load_model
from cnnlab.training.tta import tta_log_probs

SPEC = "conv3x3-8 maxpool2 conv3x3-8 maxpool2 fc10"


# ---- the measures, by hand ---------------------------------------------------------------------------
# Four images, two classes. Probabilities of class 0 / class 1, true labels:
#   a: 0.9 / 0.1, y=0  -> top-1 0 (right), confidence 0.9
#   b: 0.8 / 0.2, y=1  -> top-1 0 (wrong), confidence 0.8
#   c: 0.3 / 0.7, y=1  -> top-1 1 (right), confidence 0.7
#   d: 0.4 / 0.6, y=1  -> top-1 1 (right), confidence 0.6
PROBS = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]], dtype=torch.float64)
LABELS = torch.tensor([0, 1, 1, 1])


def test_nll_brier_and_ece_match_a_hand_computation():
    # NLL = -(ln 0.9 + ln 0.2 + ln 0.7 + ln 0.6) / 4
    assert nll(PROBS.log(), LABELS) == pytest.approx(-(math.log(0.9) + math.log(0.2) + math.log(0.7) + math.log(0.6)) / 4)
    # Brier: a (0.1^2 + 0.1^2) = 0.02, b (0.8^2 + 0.8^2) = 1.28, c 0.09 + 0.09 = 0.18, d 0.16 + 0.16 = 0.32
    assert brier(PROBS, LABELS) == pytest.approx((0.02 + 1.28 + 0.18 + 0.32) / 4)
    # 15 bins of width 1/15: 0.9 -> bin 14 ((13/15, 14/15] = (0.867, 0.933]), 0.8 -> bin 12 ((0.733, 0.8]),
    # 0.7 -> bin 11 ((0.667, 0.733]), 0.6 -> bin 9 ((0.533, 0.6]): one image per bin, so
    # ECE = (|1 - 0.9| + |0 - 0.8| + |1 - 0.7| + |1 - 0.6|) / 4 = 1.6 / 4 = 0.4
    assert ece(PROBS, LABELS) == pytest.approx(0.4)
    bins = reliability_bins(PROBS, LABELS)
    assert [i for i, n in enumerate(bins["count"]) if n] == [8, 10, 11, 13]  # 0-based: bins 9, 11, 12, 14
    # 3 bins of width 1/3: 0.9, 0.8 and 0.7 share (2/3, 1] (accuracy 2/3, confidence 0.8), 0.6 alone in (1/3, 2/3]
    assert ece(PROBS, LABELS, bins=3) == pytest.approx(3 / 4 * abs(2 / 3 - 0.8) + 1 / 4 * abs(1 - 0.6))
    m = measures(PROBS.log(), LABELS)
    assert m["accuracy"] == 0.75


def test_a_confidence_on_a_bin_edge_goes_to_the_lower_bin():
    probs = torch.tensor([[2 / 3, 1 / 3], [1.0, 0.0]], dtype=torch.float64)
    bins = reliability_bins(probs, torch.tensor([0, 0]), bins=3)
    assert bins["count"] == [0, 1, 1]  # 2/3 in (1/3, 2/3], 1.0 in (2/3, 1]


def test_fit_recovers_a_planted_temperature_and_agrees_with_scipy():
    optimize = pytest.importorskip("scipy.optimize")
    g = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(8_000, 10, generator=g, dtype=torch.float64)
    true_t = 2.5  # labels drawn from softmax(z / 2.5): the model's raw softmax is over-confident
    labels = torch.multinomial(torch.softmax(logits / true_t, 1), 1, generator=g).flatten()
    lp = logits.log_softmax(1)
    t = fit_temperature(lp, labels)
    assert t == pytest.approx(true_t, rel=0.08)
    ref = optimize.minimize_scalar(lambda u: nll(temper(lp, math.exp(u)), labels), bounds=(math.log(0.05), math.log(20)),
                                   method="bounded", options={"xatol": 1e-10})
    assert t == pytest.approx(math.exp(ref.x), rel=1e-4)
    assert nll(temper(lp, t), labels) <= nll(lp, labels)


def test_temperature_never_changes_the_top_class_and_is_softmax_of_logits_over_t():
    g = torch.Generator().manual_seed(1)
    z = 5 * torch.randn(500, 7, generator=g)
    for t in (0.05, 0.3, 1.7, 20.0):
        assert torch.equal(temper(z.log_softmax(1), t).argmax(1), z.argmax(1))
    # one view: the calibrated probabilities are softmax(z / T)
    model = torch.nn.Flatten()
    images = (torch.rand(6, 1, 1, 7, generator=g) * 255).to(torch.uint8)

    def prep(x):
        return x.float()

    got = tta_log_probs(model, images, prep, "none", temperature=2.0).exp()
    torch.testing.assert_close(got, torch.softmax(images.float().flatten(1) / 2.0, 1))


# ---- a run -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("calibrate")
    out = {}
    for name, vf in (("val", 0.1), ("noval", 0.0)):
        cnnlab.train(model=SPEC, data="digits", epochs=1, batch_size=64, lr=0.01, val_fraction=vf,
                     out=str(base / name), verbose=False, quiet=True)
        out[name] = base / name
    image = base / "digit.png"
    Image.fromarray(cnnlab.data.load_dataset("digits").test.images[5, 0].numpy()).save(image)
    out["image"] = image
    return out


def test_calibrate_a_run_keeps_accuracy_stores_t_and_predict_eval_use_it(runs):
    run = runs["val"]
    # fp32, as calibrate computes its figures: under "auto" a CPU with native bf16 evaluates in bf16, whose
    # rounding moves the loss in the fourth digit, which is not what this test is about
    before_eval = evaluate(run, precision="fp32")
    before_pred = predict(run, [runs["image"]], top_k=10)[0]
    result = calibrate(run)
    card = RunDir(run).card("best")
    assert card.temperature == pytest.approx(result.temperature) and result.temperature != 1.0
    # accuracy unchanged by construction: the test accuracy before and after, and what eval reports
    assert result.before["accuracy"] == result.after["accuracy"]
    after_eval = evaluate(run, precision="fp32")
    assert after_eval.accuracy == before_eval.accuracy
    assert torch.equal(after_eval.confusion, before_eval.confusion)
    assert result.val_nll[1] <= result.val_nll[0]
    assert after_eval.loss == pytest.approx(result.after["nll"], rel=1e-5)  # eval's loss is the calibrated NLL
    # predict: softmax(logits / T), computed here directly from the model
    model, _ = load_model(run)
    pixels = torch.from_numpy(np.array(Image.open(runs["image"]))).float().div(255).view(1, 1, 8, 8)
    with torch.no_grad():
        logits = model((pixels - torch.tensor(card.mean).view(1, -1, 1, 1)) / torch.tensor(card.std).view(1, -1, 1, 1))
    want = torch.softmax(logits / card.temperature, 1)[0]
    after_pred = predict(run, [runs["image"]], top_k=10)[0]
    assert after_pred.top[0][0] == before_pred.top[0][0]
    for name, p in after_pred.top:
        assert p == pytest.approx(float(want[card.classes.index(name)]), abs=1e-5)
    # the files
    saved = json.loads((run / "calibration.json").read_text())
    assert saved["temperature"] == pytest.approx(result.temperature)
    with Image.open(run / "reliability.png") as img:
        assert img.format == "PNG" and img.width > 500
    # the split: the one training held out, round(0.1 x images) of each class of the training split
    counts = torch.bincount(cnnlab.data.load_dataset("digits").train.labels).tolist()
    assert result.val_images == sum(round(0.1 * n) for n in counts)


def test_export_divides_the_logits_by_the_temperature(runs, tmp_path):
    from cnnlab.training.export import exportable  # noqa: PLC0415

    run = runs["val"]
    if RunDir(run).card("best").temperature == 1.0:
        calibrate(run)
    wrapped, card = exportable(run)
    model, _ = load_model(run)
    x = torch.rand(3, 1, 8, 8)
    mean, std = torch.tensor(card["mean"]).view(1, -1, 1, 1), torch.tensor(card["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), model((x - mean) / std) / card["temperature"])


def test_a_run_without_validation_split_is_refused_in_one_line_and_nothing_is_written(runs, capsys):
    run = runs["noval"]
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert main(["calibrate", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "validation split" in err and "--val-fraction" in err
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_a_damaged_temperature_in_the_card_is_one_line(runs, tmp_path):
    card = json.loads((runs["val"] / "best.json").read_text())
    for bad in (0, -1.0, "x", True, float("nan"), float("inf")):
        with pytest.raises(CnnlabError, match="temperature"):
            ModelCard.from_dict({**card, "temperature": bad})
    old = {k: v for k, v in card.items() if k != "temperature"}  # a card written before calibration existed
    assert ModelCard.from_dict(old).temperature == 1.0
