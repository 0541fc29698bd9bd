"""`transfer --strategy auto`: pick a strategy by measuring the candidates on the training data.

The lecture's rule (size x similarity, see `cnnlab.transfer_learning.api`) names a case and a strategy;
then every candidate strategy is measured on held-out parts of the TRAINING set and the best one is
run. The test set takes no part in the choice: the splits below are drawn from the training labels
only, and each candidate sees a dataset whose "test" split is the held-out training part.

Protocol (`validation_splits`):
- small training sets (at most `cv_limit` images): stratified k-fold cross-validation, k = 3 (fewer when
  a class has fewer images), seeded: every training image is held out once, so at 10 images per class
  the estimate rests on 100 predictions instead of the 20 a single 20% split would give;
- larger ones: one stratified, seeded holdout of 20% (at most `max_holdout` images), so each costly
  candidate costs one extra run.
Every candidate is measured with the budget it would be run with (the cheap `features` head with its
own cross-validated `C` inside each fitting part; `finetune` and `retrain` for `steps` optimizer steps,
or `auto_steps` to shorten them); the scores are paired (the same splits for every candidate).

The rule (`select`): let p be the best mean held-out accuracy and n the number of held-out predictions;
its binomial standard error is se = sqrt(p (1 - p) / n). Among the candidates within se of p, the one
that adapts the most weights wins (retrain, then finetune, then features; the higher accuracy among
equals). Why not simply the best mean: each candidate is measured after training on (k-1)/k of the
images but then runs on all of them, and the strategies that adapt more weights gain more from the
extra part; a difference the measurement cannot resolve should not decide against them. Before it, the
best mean won (an exact tie to the cheaper strategy); how the two rules compared on targets and seeds the
present one had not seen: docs/transfer.md ("How close `auto` comes", `benchmarks/transfer_auto.py`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from cnnlab.data.memory import stratified_holdout

Split = tuple[torch.Tensor, torch.Tensor]  # (fit indices, held-out indices) into the training set
# How many of the backbone's weights a strategy adapts, in order: within the noise, more wins (`select`).
ADAPTS = {"features": 0, "finetune": 1, "retrain": 2}


def validation_splits(labels: torch.Tensor, seed: int, *, folds: int = 3, cv_limit: int = 2000,
                      holdout: float = 0.2, max_holdout: int = 2000) -> tuple[str, list[Split]]:
    """(description, splits) of the training labels (N,): stratified k-fold when N <= cv_limit, else one
    stratified holdout. Indices are sorted int64 tensors; each pair is disjoint and covers the set."""
    labels = labels.to(torch.int64).cpu()
    n = len(labels)
    counts = torch.bincount(labels)
    smallest = int(counts[counts > 0].min()) if n else 0
    if n <= cv_limit and smallest >= 2:
        k = min(folds, smallest)
        g = torch.Generator().manual_seed(int(seed))
        fold_of = torch.empty(n, dtype=torch.int64)
        offset = 0  # deal each class round-robin over the folds after a seeded shuffle; continue the
        for c in torch.unique(labels).tolist():  # deal where the last class stopped, so folds stay balanced
            idx = torch.nonzero(labels == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            fold_of[idx] = (torch.arange(len(idx)) + offset) % k
            offset += len(idx)
        splits = [(torch.nonzero(fold_of != f).flatten(), torch.nonzero(fold_of == f).flatten()) for f in range(k)]
        return (f"stratified {k}-fold cross-validation on the {n:,} training images (seed {seed}): "
                f"every one held out once"), splits
    fraction = min(holdout, max_holdout / max(n, 1))
    keep, held = stratified_holdout(labels, fraction, seed)
    if len(held) == 0 or len(keep) == 0:
        raise ValueError(f"cannot hold out a validation part of {n} training images")
    return (f"one stratified holdout of {len(held):,} of the {n:,} training images (seed {seed})"), [(keep, held)]


@dataclass
class Candidate:
    """A strategy to measure: `score(fit_idx, held_idx)` trains on the fitting part of the training set
    and returns the accuracy on the held-out part."""

    strategy: str  # features, finetune or retrain
    layer: str
    head: str
    score: Callable[[torch.Tensor, torch.Tensor], float]
    budget: str = ""  # in words, e.g. "logreg, C by inner CV" or "250 steps"


@dataclass
class Selection:
    """What `auto` measured and chose. `rows`: one per candidate, in the order given (cheapest first)."""

    protocol: str
    rows: list[dict] = field(default_factory=list)
    picked: int = 0  # index into rows
    held_out: int = 0  # held-out predictions per candidate (every image once under k-fold)
    noise: float = 0.0  # binomial standard error of the best mean accuracy over `held_out` predictions
    lecture: str = ""  # the strategy the lecture's rule names
    lecture_layer: str = ""

    @property
    def choice(self) -> dict:
        return self.rows[self.picked]

    @property
    def agrees(self) -> bool:
        c = self.choice
        return c["strategy"] == self.lecture and c["layer"] == self.lecture_layer

    def table(self) -> str:
        k = len(self.rows[0]["scores"]) if self.rows else 0
        lines = [f"| candidate | head | layer | budget | validation accuracy{' (mean of folds)' if k > 1 else ''} "
                 "| per fold | seconds | |", "|---|---|---|---|---:|---|---:|---|"]
        for i, r in enumerate(self.rows):
            folds = ", ".join(f"{100 * s:.1f}" for s in r["scores"])
            mark = "picked" + (" (= lecture's rule)" if self.agrees else "") if i == self.picked else (
                "lecture's rule" if (r["strategy"], r["layer"]) == (self.lecture, self.lecture_layer) else "")
            if i != self.picked and r.get("within_noise"):
                mark = ", ".join(m for m in (mark, "within noise of the best") if m)
            lines.append(f"| {r['strategy']} | {r['head']} | {r['layer']} | {r['budget']} | "
                         f"{100 * r['accuracy']:.2f}% | {folds} | {r['seconds']:.1f} | {mark} |")
        return "\n".join(lines)

    def rule(self) -> str:
        """The choice rule with this selection's numbers, in words."""
        best = max(r["accuracy"] for r in self.rows)
        return (f"best mean {100 * best:.2f}% over {self.held_out:,} held-out predictions, standard error "
                f"{100 * self.noise:.2f} points; among the candidates within it, the one that adapts the most "
                "weights (retrain > finetune > features)")

    def verdict(self) -> str:
        c = self.choice
        what = f"{c['strategy']}" + (f" at '{c['layer']}'" if c["strategy"] == "features" else "")
        rule = f"{self.lecture}" + (f" at '{self.lecture_layer}'" if self.lecture == "features" else "")
        if self.agrees:
            return f"picked {what} (validation {100 * c['accuracy']:.2f}%); the lecture's rule agrees"
        mine = next((r for r in self.rows if (r["strategy"], r["layer"]) == (self.lecture, self.lecture_layer)), None)
        theirs = f", validation {100 * mine['accuracy']:.2f}%" if mine is not None else ""
        return (f"picked {what} (validation {100 * c['accuracy']:.2f}%); the lecture's rule ({rule}{theirs}) "
                "disagrees")

    def to_dict(self) -> dict:
        return {"protocol": self.protocol, "rows": self.rows, "picked": self.picked, "lecture": self.lecture,
                "lecture_layer": self.lecture_layer, "agrees": self.agrees, "held_out": self.held_out,
                "noise": self.noise, "rule": self.rule()}


def select(candidates: Sequence[Candidate], splits: Sequence[Split], protocol: str, *, lecture: str,
           lecture_layer: str, log: Callable[[str], object] = lambda *_: None) -> Selection:
    """Score every candidate on every split (paired); pick, among those within one standard error of the
    best mean, the one that adapts the most weights (`ADAPTS`; the module's docstring says why)."""
    held_out = sum(len(held) for _, held in splits)
    sel = Selection(protocol, lecture=lecture, lecture_layer=lecture_layer, held_out=held_out)
    for cand in candidates:
        t0 = time.perf_counter()
        scores = [float(cand.score(fit_idx, held_idx)) for fit_idx, held_idx in splits]
        acc = sum(scores) / len(scores)
        sel.rows.append({"strategy": cand.strategy, "layer": cand.layer, "head": cand.head, "budget": cand.budget,
                         "accuracy": acc, "scores": scores, "seconds": time.perf_counter() - t0})
        log(f"  validation: {cand.strategy:<9} {cand.head:<7} {cand.layer:<12} {100 * acc:6.2f}%  "
            f"({time.perf_counter() - t0:.1f} s)")
    best = max(r["accuracy"] for r in sel.rows)
    sel.noise = math.sqrt(best * (1.0 - best) / max(held_out, 1))
    within = [i for i, r in enumerate(sel.rows) if r["accuracy"] >= best - sel.noise]
    for i in within:
        sel.rows[i]["within_noise"] = True
    # most adaptive first, then the higher accuracy, then the earlier (cheaper) candidate
    sel.picked = max(within, key=lambda i: (ADAPTS.get(sel.rows[i]["strategy"], 0), sel.rows[i]["accuracy"], -i))
    return sel
