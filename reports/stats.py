"""Confidence intervals and verdicts for the report's comparisons (no scipy: the Student t law is written here).

- t_cdf / t_ppf: Student t distribution function and quantile for any df > 0 (Welch's df is not an integer),
  through the regularised incomplete beta function (continued fraction, modified Lentz).
- paired_ci / welch_ci: 95% interval of a difference of means, paired by seed or Welch's unequal variances.
- verdict: better / worse / equivalent / undecided against an equivalence margin.
- seeds_to_decide: the sample size at which the observed spread would decide an undecided comparison.

Every function takes and returns plain floats; NaN stands for "cannot be computed".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

LEVEL = 0.95
BETTER, WORSE, EQUIVALENT, UNDECIDED = "better", "worse", "equivalent", "undecided"
VERDICTS = (BETTER, WORSE, EQUIVALENT, UNDECIDED)
MAX_SEEDS = 1000  # seeds_to_decide gives up beyond this (None: not decidable at any practical count)


# ---------------------------------------------------------------------------- Student t

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function I_x(a, b) (modified Lentz; converges for x < (a+1)/(a+b+2))."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))  # even step
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))  # odd step
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc: x = {x} is outside [0, 1]")
    if x == 0.0 or x == 1.0:
        return x
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(ln_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b  # symmetry: I_x(a, b) = 1 - I_{1-x}(b, a)


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df > 0 degrees of freedom (df = inf: the normal law)."""
    if not df > 0:
        raise ValueError(f"t_cdf: degrees of freedom must be > 0, got {df}")
    if math.isinf(df):
        return 0.5 * math.erfc(-t / math.sqrt(2.0))
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def t_ppf(p: float, df: float) -> float:
    """The p-quantile of Student's t with df > 0 (e.g. t_ppf(0.975, 2) = 4.3027): bisection on t_cdf."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_ppf: p must be in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:  # bracket: the quantile lies in [lo, hi]
        lo, hi = hi, hi * 2.0
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def t_crit(df: float, level: float = LEVEL) -> float:
    """Two-sided critical value: t_{(1+level)/2, df}."""
    return t_ppf(0.5 + level / 2.0, df)


# ---------------------------------------------------------------------------- intervals

@dataclass
class Interval:
    """A difference a - b with its confidence interval."""

    diff: float
    low: float
    high: float
    se: float  # standard error of diff
    df: float  # degrees of freedom of the t quantile used
    n_a: int
    n_b: int
    paired: bool
    spread: float  # paired: sd of the differences; Welch: sqrt(s_a^2 + s_b^2) (per-observation spread of a - b)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0


def _mean_sd(x: list[float]) -> tuple[float, float, int]:
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0
    m = sum(x) / n
    if n < 2:
        return m, math.nan, n
    return m, math.sqrt(sum((v - m) ** 2 for v in x) / (n - 1)), n


def mean_ci(x: list[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): the t interval of a mean; low and high NaN below two values."""
    m, s, n = _mean_sd([float(v) for v in x])
    if n < 2:
        return m, math.nan, math.nan
    h = t_crit(n - 1, level) * s / math.sqrt(n)
    return m, m - h, m + h


def paired_ci(a: list[float], b: list[float], level: float = LEVEL) -> Interval:
    """Paired difference: a[i] and b[i] share a seed (and so data order); d_i = a_i - b_i, mean(d) +- t_{n-1} s_d/sqrt(n)."""
    if len(a) != len(b):
        raise ValueError(f"paired_ci: {len(a)} vs {len(b)} values; pairs need equal lengths")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    m, s, n = _mean_sd(d)
    if n < 2:
        return Interval(m, math.nan, math.nan, math.nan, math.nan, n, n, True, math.nan)
    se = s / math.sqrt(n)
    h = t_crit(n - 1, level) * se
    return Interval(m, m - h, m + h, se, float(n - 1), n, n, True, s)


def welch_df(va: float, na: float, vb: float, nb: float) -> float:
    """Welch-Satterthwaite degrees of freedom of (var_a/n_a + var_b/n_b)."""
    qa, qb = va / na, vb / nb
    den = (qa * qa / (na - 1) if qa else 0.0) + (qb * qb / (nb - 1) if qb else 0.0)
    return (qa + qb) ** 2 / den if den > 0 else math.nan


def welch_from_stats(ma: float, sa: float, na: int, mb: float, sb: float, nb: int,
                     level: float = LEVEL, se_factor: float = 1.0) -> Interval:
    """Welch interval from means, sample stds and counts; se_factor scales each side's standard error
    (sqrt(pi/2) when the centres are medians of normal samples)."""
    d = ma - mb
    if na < 2 or nb < 2 or math.isnan(sa) or math.isnan(sb):
        return Interval(d, math.nan, math.nan, math.nan, math.nan, na, nb, False, math.nan)
    va, vb = (se_factor * sa) ** 2, (se_factor * sb) ** 2
    se = math.sqrt(va / na + vb / nb)
    df = welch_df(va, na, vb, nb)
    if se == 0 or math.isnan(df):
        return Interval(d, d, d, 0.0, math.nan, na, nb, False, 0.0)
    h = t_crit(df, level) * se
    return Interval(d, d - h, d + h, se, df, na, nb, False, math.sqrt(sa * sa + sb * sb))


def welch_ci(a: list[float], b: list[float], level: float = LEVEL) -> Interval:
    """Unpaired difference of means, unequal variances: d +- t_nu sqrt(s_a^2/n_a + s_b^2/n_b), nu Welch's df."""
    ma, sa, na = _mean_sd([float(x) for x in a])
    mb, sb, nb = _mean_sd([float(x) for x in b])
    return welch_from_stats(ma, sa, na, mb, sb, nb, level)


# ---------------------------------------------------------------------------- verdicts

def verdict(low: float, high: float, margin: float) -> str:
    """better: CI above 0; worse: CI below 0; equivalent: CI inside (-margin, +margin); else undecided.

    Precedence: an interval that excludes 0 is better/worse even when it also lies inside the margin
    (a real but small difference is reported as the difference it is; the diff and CI show its size)."""
    if math.isnan(low) or math.isnan(high):
        return UNDECIDED
    if low > 0:
        return BETTER
    if high < 0:
        return WORSE
    if -margin < low and high < margin:
        return EQUIVALENT
    return UNDECIDED


def seeds_to_decide(diff: float, spread: float, margin: float, paired: bool = True,
                    level: float = LEVEL, ratio: float = 1.0, max_n: int = MAX_SEEDS) -> int | None:
    """Smallest n (seeds per side) at which an interval around the observed diff, with the observed spread, decides.

    It decides when its half-width h(n) falls below D = max(|diff|, margin - |diff|): below |diff| it excludes 0,
    below margin - |diff| it lies inside +-margin. Paired: h(n) = t_{n-1} s_d / sqrt(n). Welch (n per side):
    h(n) = t_nu sqrt(s_a^2 + s_b^2) / sqrt(n), nu = Welch's df at n per side (ratio = s_b^2 / s_a^2 sets it).
    None when the spread is unknown or no n up to max_n decides (diff sits exactly where D is 0)."""
    if any(math.isnan(x) for x in (diff, spread, margin)) or spread <= 0:
        return None
    need = max(abs(diff), margin - abs(diff))
    if need <= 0:
        return None
    for n in range(2, max_n + 1):
        if paired:
            df = n - 1.0
        else:  # Welch df for n per side with variances in the observed ratio
            va, vb = 1.0, ratio
            df = welch_df(va, n, vb, n)
        if t_crit(df, level) * spread / math.sqrt(n) < need:
            return n
    return None
