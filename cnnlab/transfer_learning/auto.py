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
or `auto_steps` to shorten them); the scores are paired (the same splits for every candidate). The
highest mean held-out accuracy wins; an exact tie goes to the cheaper strategy (listed first).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from cnnlab.data.memory import stratified_holdout

Split = tuple[torch.Tensor, torch.Tensor]  # (fit indices, held-out indices) into the training set


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
            lines.append(f"| {r['strategy']} | {r['head']} | {r['layer']} | {r['budget']} | "
                         f"{100 * r['accuracy']:.2f}% | {folds} | {r['seconds']:.1f} | {mark} |")
        return "\n".join(lines)

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
                "lecture_layer": self.lecture_layer, "agrees": self.agrees}


def select(candidates: Sequence[Candidate], splits: Sequence[Split], protocol: str, *, lecture: str,
           lecture_layer: str, log: Callable[[str], object] = lambda *_: None) -> Selection:
    """Score every candidate on every split (paired) and pick the highest mean; ties go to the earlier."""
    sel = Selection(protocol, lecture=lecture, lecture_layer=lecture_layer)
    for cand in candidates:
        t0 = time.perf_counter()
        scores = [float(cand.score(fit_idx, held_idx)) for fit_idx, held_idx in splits]
        acc = sum(scores) / len(scores)
        sel.rows.append({"strategy": cand.strategy, "layer": cand.layer, "head": cand.head, "budget": cand.budget,
                         "accuracy": acc, "scores": scores, "seconds": time.perf_counter() - t0})
        log(f"  validation: {cand.strategy:<9} {cand.head:<7} {cand.layer:<12} {100 * acc:6.2f}%  "
            f"({time.perf_counter() - t0:.1f} s)")
    best = max(r["accuracy"] for r in sel.rows)
    sel.picked = next(i for i, r in enumerate(sel.rows) if r["accuracy"] == best)
    return sel
