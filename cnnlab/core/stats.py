"""Seeds and intervals: mean, standard deviation, Student-t 95% intervals and the three-way verdict rule.

Pure Python (no numpy, no scipy): the experiments, benchmarks and anything else that repeats a
measurement over seeds summarise it here, so every claim is decided by the same arithmetic.

- `summarize(values)`: n, mean, sample standard deviation (n - 1), and the two-sided t-interval
  mean ± t(1 - a/2, n - 1) * std / sqrt(n). With one value the interval is (-inf, inf): one run
  cannot bound anything.
- `paired(a, b)`: the same for the differences a_i - b_i of runs that share a seed (same data
  subset, same initial weights where the architectures allow it), which cancels the seed's share
  of the noise.
- `check(label, a, b, threshold)`: one directional comparison decided by the paired interval:
  supported when the whole interval of a - b lies above `threshold`, contradicted when it lies
  wholly below, inconclusive otherwise. `exact(label, holds)`: a deterministic fact (a parameter
  count, a receptive field), supported or contradicted. `combine(checks)`: contradicted if any
  part is, supported if every part is, otherwise inconclusive.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
CONFIDENCE = 0.95

RULE = ("Each part of the claim is a paired comparison over seeds (the runs of one seed share their data "
        "subset and initialisation): it is supported when the mean difference has the claimed sign and its "
        "95% t-interval lies wholly on that side of the threshold, contradicted when the interval lies wholly "
        "on the other side, and inconclusive at this budget otherwise (always with one seed). Exact facts "
        "(counts, receptive fields) are checked as equalities. The claim is supported when every part is, "
        "contradicted when any part is, and inconclusive otherwise. Intervals are per comparison, not "
        "corrected for multiple comparisons.")


# ---- the t distribution ------------------------------------------------------------------------
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (Student's t, `df` degrees of freedom), by bisection on `t_cdf`."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# ---- summaries ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """n values summarised: mean, sample std (n - 1; nan for one value) and the t-interval [low, high]."""

    n: int
    mean: float
    std: float
    low: float
    high: float
    confidence: float = CONFIDENCE

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    def text(self, spec: str = ".4g") -> str:
        """E.g. '87.50% ± 0.31 [86.73, 88.27]' for spec '.2%' (std and bounds in points), '0.53 ± 0.02 [...]'."""
        return format_interval(self.to_dict(), spec)


def summarize(values: Iterable[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean, sample standard deviation and the two-sided Student-t interval of the mean."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("summarize needs at least one value")
    n = len(xs)
    mean = math.fsum(xs) / n
    if n == 1:
        return Interval(1, mean, float("nan"), -math.inf, math.inf, confidence)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half, confidence)


def paired(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """`summarize` of the differences a_i - b_i (runs paired by seed)."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs as many values on both sides, got {len(a)} and {len(b)}")
    return summarize([x - y for x, y in zip(a, b, strict=True)], confidence)


def format_interval(d: dict[str, Any], spec: str = ".4g") -> str:
    """A summary dict (`Interval.to_dict()`) as 'mean ± std [low, high]'; percentages in points."""
    pct = spec.endswith("%")
    scale = 100.0 if pct else 1.0
    digits = spec.rstrip("%").lstrip("+,")
    if pct:  # '.2%' -> points with 2 decimals
        digits = (digits or ".2") + "f"
    num = lambda v: format(scale * v, digits or ".4g")  # noqa: E731
    if d.get("mean") is None:  # not finite (e.g. a diverged run)
        return "–"
    head = format(d["mean"], spec)
    if d.get("n", 1) < 2 or d.get("std") is None:
        return head
    text = f"{head} ± {num(d['std'])}"
    if d.get("low") is not None and d.get("high") is not None:
        text += f" [{num(d['low'])}, {num(d['high'])}]"
    return text


# ---- the verdict rule --------------------------------------------------------------------------
@dataclass
class Check:
    """One part of a claim: `label` (e.g. 'conv - dense > 0'), its paired interval and outcome."""

    label: str
    outcome: str  # SUPPORTED, CONTRADICTED or INCONCLUSIVE
    interval: Interval | None = None  # None for an exact fact
    threshold: float = 0.0
    detail: str = ""
    spec: str = "+.3g"  # how the difference is printed, e.g. "+.2%" for accuracies (points)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "outcome": self.outcome, "threshold": self.threshold, "detail": self.detail,
                "spec": self.spec, "interval": self.interval.to_dict() if self.interval else None}


def decide(interval: Interval, threshold: float = 0.0) -> str:
    """Supported if the mean and the whole interval are above `threshold`, contradicted if the whole
    interval is below it, inconclusive otherwise (always for n = 1)."""
    if interval.n >= 2 and interval.mean > threshold and interval.low > threshold:
        return SUPPORTED
    if interval.n >= 2 and interval.mean < threshold and interval.high < threshold:
        return CONTRADICTED
    return INCONCLUSIVE


def check(label: str, a: Sequence[float], b: Sequence[float] | None = None, threshold: float = 0.0,
          spec: str = "+.2%") -> Check:
    """The claim 'a - b > threshold' (or 'a > threshold' without `b`), decided on the paired interval.
    `spec` formats the difference when printed (default: accuracies, in percentage points)."""
    iv = paired(a, b) if b is not None else summarize(a)
    return Check(label, decide(iv, threshold), iv, threshold, spec=spec)


def exact(label: str, holds: bool, detail: str = "") -> Check:
    """A deterministic fact, true or false whatever the seed."""
    return Check(label, SUPPORTED if holds else CONTRADICTED, None, 0.0, detail)


def combine(checks: Sequence[Check]) -> str:
    """Contradicted if any check is, supported if all are (and there is at least one), else inconclusive."""
    outcomes = [c.outcome for c in checks]
    if CONTRADICTED in outcomes:
        return CONTRADICTED
    if outcomes and all(o == SUPPORTED for o in outcomes):
        return SUPPORTED
    return INCONCLUSIVE


def as_supported(outcome: str) -> bool | None:
    """SUPPORTED -> True, CONTRADICTED -> False, INCONCLUSIVE -> None (an `Outcome.supported`)."""
    return {SUPPORTED: True, CONTRADICTED: False, INCONCLUSIVE: None}[outcome]
