"""The frontier: true reward J (R*, Eq. 12) and proxy Ĵ (R_phi, Eq. 14) against KL(π‖π_0), for
every method, beside what was reachable at each KL (Sections 6.2, 7.7; Gao et al. 2022).

Three pure pieces, each a function of reward matrices (prompts × samples or prompts × points):

- :func:`best_of_n_curve`: best-of-n for n = 1 … N from *one* sample of N draws per prompt. The
  expected reward of the best (by R_phi) of n draws is estimated without bias from the N draws by
  the U-statistic over all n-subsets (:func:`best_of_n_weights`); its KL is given both as the usual
  formula log n − (n−1)/n and as the exact best-of-n KL of the empirical distribution of the draws
  (``decoding.best_of_n.plug_in_best_of_n_kl``).
- :func:`reference_curve`: the KL-regularised optimum π* ∝ π_0·exp(R*/β) (Eq. 17 with R*),
  reweighted on π_0's own draws, over a grid of β: the most J any policy supported on those draws
  can have at its KL to them, so each method's gap to what was possible shows.
- :func:`fit_gao`: Gao et al.'s functional forms in d = √KL of the gain over π_0, best-of-n
  ΔJ(d) = d(α − βd) and RL ΔJ(d) = d(α − β log d), fitted by least squares, with percentile
  intervals from a bootstrap over prompts; the KL where the fitted J peaks (the over-optimisation
  point) comes with its interval and the share of resamples that peak at all.

Evaluated policies become *points* (:func:`frontier_point`: J, Ĵ, KL and each prompt's J and Ĵ, the
ΔJ and ΔĴ paired by prompt with π_0's), and a path of points its fits (:func:`fit_points`), as
``rlhflab frontier`` and ``rlhflab loop --eval_every`` both write them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import gammaln, logsumexp

from rlhflab.decoding.best_of_n import plug_in_best_of_n_kl
from rlhflab.decoding.best_of_n_math import best_of_n_kl_bound
from rlhflab.evaluation.plots import _save, pyplot

if TYPE_CHECKING:
    from rlhflab.evaluation.metrics import PolicyEvaluation

FORMS = ("bon", "rl")


def per_prompt_means(rewards: Sequence[float], prompt_index: Sequence[int], num_prompts: int) -> np.ndarray:
    """Mean reward of each prompt's samples, (num_prompts,): the unit every standard error and
    bootstrap here resamples, since samples of one prompt share its context."""
    index = np.asarray(prompt_index, dtype=int)
    counts = np.bincount(index, minlength=num_prompts)
    if (counts == 0).any():
        raise ValueError(f"prompt {int(np.argmin(counts))} has no samples")
    return np.bincount(index, weights=np.asarray(rewards, dtype=float), minlength=num_prompts) / counts


def reward_matrix(rewards: Sequence[float], prompt_index: Sequence[int], num_prompts: int) -> np.ndarray:
    """Rewards regrouped as (num_prompts, samples per prompt), each row in sampling order; every
    prompt must have the same number of samples (``evaluate_policy`` with ``num_samples``)."""
    index = np.asarray(prompt_index, dtype=int)
    counts = np.bincount(index, minlength=num_prompts)
    if len(set(counts.tolist())) != 1 or counts[0] == 0:
        raise ValueError(f"need the same number of samples for every prompt, got counts {sorted(set(counts))}")
    order = np.argsort(index, kind="stable")
    return np.asarray(rewards, dtype=float)[order].reshape(num_prompts, counts[0])


def mean_and_se(values: np.ndarray) -> tuple[float, float | None]:
    """Mean over prompts and its standard error std/√P (ddof 1; None for a single prompt)."""
    values = np.asarray(values, dtype=float)
    se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    return float(values.mean()), se


# ---- best-of-n from one large sample ----------------------------------------------------------
def best_of_n_weights(num_draws: int, n: int) -> np.ndarray:
    """w_i = C(i−1, n−1) / C(N, n), i = 1 … N: the probability that the i-th smallest of N draws is
    the largest of a uniformly random n-subset of them. Σ_i w_i r_(i), with r sorted by the selecting
    reward, is then the unbiased U-statistic estimate of E[reward of the best of n draws]."""
    if not 1 <= n <= num_draws:
        raise ValueError(f"best-of-n from {num_draws} draws needs 1 <= n <= {num_draws}, got {n}")
    i = np.arange(1, num_draws + 1)
    log_w = np.full(num_draws, -np.inf)
    ok = i >= n
    log_choose = lambda a, b: gammaln(a + 1) - gammaln(b + 1) - gammaln(a - b + 1)  # noqa: E731
    log_w[ok] = log_choose(i[ok] - 1, n - 1) - log_choose(num_draws, n)
    return np.exp(log_w)


def _tie_averaged(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Each value replaced by the mean over the draws with an equal key: a tie in the selecting
    reward is then broken uniformly at random, in expectation."""
    out = values.copy()
    for key in np.unique(keys):
        same = keys == key
        if same.sum() > 1:
            out[same] = values[same].mean()
    return out


def best_of_n_curve(
    proxy: np.ndarray,
    oracle: np.ndarray,
    ns: Sequence[int],
    texts: Sequence[Sequence[str]] | None = None,
) -> list[dict]:
    """Best-of-n by the proxy R_phi, n in ``ns``, from one sample of N draws per prompt.

    ``proxy``, ``oracle``: (P, N) rewards R_phi and R* of each prompt's N draws from π_0; ``texts``:
    the draws (P lists of N), so that repeated texts merge in the plug-in KL. Returns one dict per n
    with ``J``, ``J_se``, ``J_hat``, ``J_hat_se`` (mean over prompts of the U-statistic estimate,
    :func:`best_of_n_weights`; se over prompts), ``kl_bound`` = log n − (n−1)/n, and ``kl_estimate``
    ± ``kl_estimate_se``: the exact best-of-n KL of each prompt's empirical distribution (biased low,
    and at most log N), and the per-prompt values ``per_prompt_J`` / ``per_prompt_J_hat``.
    """
    proxy, oracle = np.asarray(proxy, dtype=float), np.asarray(oracle, dtype=float)
    if proxy.shape != oracle.shape or proxy.ndim != 2:
        raise ValueError(f"proxy and oracle must both be (prompts, draws), got {proxy.shape} and {oracle.shape}")
    num_prompts, num_draws = proxy.shape
    order = np.argsort(proxy, axis=1, kind="stable")
    sorted_proxy = np.take_along_axis(proxy, order, 1)
    sorted_oracle = np.stack([_tie_averaged(o, p) for o, p in zip(np.take_along_axis(oracle, order, 1), sorted_proxy)])
    points = []
    for n in ns:
        w = best_of_n_weights(num_draws, n)
        J, J_hat = sorted_oracle @ w, sorted_proxy @ w
        kls = np.array(
            [
                plug_in_best_of_n_kl(proxy[p].tolist(), None if texts is None else list(texts[p]), n=n)
                for p in range(num_prompts)
            ]
        )
        point = {"n": int(n), "kl_bound": best_of_n_kl_bound(n)}
        point["kl_estimate"], point["kl_estimate_se"] = mean_and_se(kls)
        point["J"], point["J_se"] = mean_and_se(J)
        point["J_hat"], point["J_hat_se"] = mean_and_se(J_hat)
        point["per_prompt_J"], point["per_prompt_J_hat"] = J.tolist(), J_hat.tolist()
        points.append(point)
    return points


def powers_of_two(max_n: int) -> list[int]:
    """1, 2, 4, … up to ``max_n``, and ``max_n`` itself."""
    if max_n < 1:
        raise ValueError(f"max n must be >= 1, got {max_n}")
    ns = [2**k for k in range(int(math.log2(max_n)) + 1)]
    return ns if ns[-1] == max_n else [*ns, max_n]


# ---- the reference curve: Eq. 17 with R*, on π_0's draws ----------------------------------------
def reference_curve(oracle: np.ndarray, betas: Sequence[float]) -> list[dict]:
    """π*_β(o|c) ∝ π̂_0(o|c)·exp(R*(c, o)/β) on each prompt's N draws (π̂_0 uniform on them: Eq. 17
    with the oracle as reward), for each β in ``betas`` (``math.inf``: π̂_0 itself).

    Per prompt, KL(π*_β ‖ π̂_0) = E_{π*}[R*]/β − log Z_β with Z_β = mean_i exp(R*_i/β), and J its
    expected R*. Both rise monotonically as β falls (each derivative in 1/β is a variance), and with
    one β shared over prompts the point (mean KL, mean J) is the most J reachable at that mean KL by
    any policy on these draws (the Lagrangian with a single multiplier). Duplicate draws need no
    merging: their weights are equal. Returns dicts with ``beta``, ``kl``, ``J``, ``J_se`` in the
    order of ``betas``."""
    oracle = np.asarray(oracle, dtype=float)
    if oracle.ndim != 2:
        raise ValueError(f"oracle must be (prompts, draws), got {oracle.shape}")
    num_draws = oracle.shape[1]
    points = []
    for beta in betas:
        if not beta > 0:
            raise ValueError(f"beta must be positive (math.inf for pi_0), got {beta}")
        t = 0.0 if math.isinf(beta) else 1.0 / beta
        logits = t * oracle
        log_z = logsumexp(logits, axis=1) - math.log(num_draws)
        q = np.exp(logits - logsumexp(logits, axis=1, keepdims=True))
        J = (q * oracle).sum(1)
        kl = np.maximum(t * J - log_z, 0.0)  # ≥ 0 exactly; the clamp removes rounding below zero
        point = {"beta": float(beta), "kl": float(kl.mean())}
        point["J"], point["J_se"] = mean_and_se(J)
        points.append(point)
    return points


def reference_betas(oracle: np.ndarray, num: int = 24) -> list[float]:
    """A grid of β for :func:`reference_curve`: ∞, then log-spaced from 100× to 1/100 of the spread
    of R* within prompts (so the curve runs from π_0 to nearly the best draw of each prompt)."""
    spread = float(np.asarray(oracle, dtype=float).std(axis=1).mean()) or 1.0
    return [math.inf, *np.geomspace(100 * spread, spread / 100, num - 1).tolist()]


# ---- Gao et al. 2022 fits ----------------------------------------------------------------------
def _features(d: np.ndarray, form: str) -> np.ndarray:
    """Design matrix of ΔJ = α·f1(d) − β·f2(d): best-of-n (d, d²), RL (d, d log d) with 0 log 0 = 0."""
    if form == "bon":
        return np.stack([d, -(d**2)], axis=1)
    if form == "rl":
        d_log_d = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
        return np.stack([d, -d_log_d], axis=1)
    raise ValueError(f"unknown form {form!r}; choose from {', '.join(FORMS)}")


def peak_distance(alpha, beta, form: str):
    """d at which the fitted ΔJ(d) peaks (elementwise): best-of-n α/(2β), RL exp(α/β − 1); +∞ where
    β ≤ 0 (no peak: the curve never turns), 0 for best-of-n where α ≤ 0 (J never rises)."""
    alpha, beta = np.asarray(alpha, dtype=float), np.asarray(beta, dtype=float)
    safe = np.where(beta > 0, beta, 1.0)
    if form == "bon":
        d = np.where(alpha > 0, alpha / (2 * safe), 0.0)
    else:
        d = np.exp(np.minimum(alpha / safe - 1.0, 700.0))
    return np.where(beta > 0, d, np.inf)


def gao_curve(d, alpha: float, beta: float, form: str) -> np.ndarray:
    """ΔJ(d) of the fitted form at distances ``d`` (the fit's own line, e.g. for a plot)."""
    return _features(np.asarray(d, dtype=float), form) @ np.array([alpha, beta])


@dataclass
class GaoFit:
    """A Gao et al. 2022 fit of ΔJ = J − J(π_0) against d = √KL; intervals are bootstrap
    percentiles over prompts (KL is held at its measured value in each resample)."""

    form: str  # "bon": d(α − βd); "rl": d(α − β log d)
    alpha: float
    beta: float
    alpha_ci: tuple[float, float]
    beta_ci: tuple[float, float]
    peak_kl: float  # KL = d*² where the fitted ΔJ peaks; inf when it never turns
    peak_kl_ci: tuple[float, float]
    peak_gain: float | None  # fitted ΔJ at the peak (None without a peak)
    peaked_fraction: float  # share of bootstrap resamples whose fit turns (β > 0)
    max_kl: float  # the largest KL measured: a peak beyond it is an extrapolation
    points: int
    prompts: int
    level: float
    residual_rms: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def extrapolated(self) -> bool:
        return self.peak_kl > self.max_kl

    def describe(self, what: str = "J") -> str:
        """One line: the coefficients with their intervals and where the fitted curve peaks."""
        pct = f"{100 * self.level:.0f}%"
        shape = "d(α − βd)" if self.form == "bon" else "d(α − β log d)"
        line = (
            f"{what} − {what}(π_0) = {shape}: α = {self.alpha:.4g} [{self.alpha_ci[0]:.4g}, {self.alpha_ci[1]:.4g}], "
            f"β = {self.beta:.4g} [{self.beta_ci[0]:.4g}, {self.beta_ci[1]:.4g}] ({pct} bootstrap over "
            f"{self.prompts} prompts, {self.points} points)"
        )
        if math.isinf(self.peak_kl):
            return line + "; the fit does not turn: no peak"
        far = 10 * self.max_kl  # a peak past this is the fit's extrapolation, not a finding: its digits are not shown

        def kl(value: float) -> str:
            return f"> {far:.3g}" if value > far else f"{value:.3g}"

        where = "beyond the largest KL measured" if self.extrapolated else "inside the measured range"
        gain = f", {what} gain there {self.peak_gain:+.3g}" if self.peak_kl <= far else ""
        return (
            f"{line}; peaks at KL {kl(self.peak_kl)} [{kl(self.peak_kl_ci[0])}, {kl(self.peak_kl_ci[1])}] nats "
            f"({where}, {self.max_kl:.3g}){gain}; {100 * self.peaked_fraction:.0f}% of resamples peak"
        )


def fit_gao(
    kl: Sequence[float],
    delta: np.ndarray,
    form: str,
    num_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> GaoFit:
    """Least-squares fit of Gao et al.'s form ``form`` to the mean over prompts of ``delta``
    (P prompts × K points: each prompt's J at each point minus its J under π_0, paired), against
    d = √max(KL, 0) of each point; intervals from ``num_bootstrap`` resamples of the prompts."""
    delta = np.asarray(delta, dtype=float)
    kl = np.maximum(np.asarray(kl, dtype=float), 0.0)
    if delta.ndim != 2 or delta.shape[1] != len(kl):
        raise ValueError(f"delta must be (prompts, {len(kl)} points), got {delta.shape}")
    X = _features(np.sqrt(kl), form)
    if len(kl) < 3 or np.linalg.matrix_rank(X) < 2:
        raise ValueError(f"a fit needs at least 3 points at 2 or more distinct KL > 0, got KL {kl.round(3).tolist()}")
    if delta.shape[0] < 2:
        raise ValueError("a bootstrap over prompts needs at least 2 prompts")
    pinv = np.linalg.pinv(X)  # (2, K): coefficients of every curve at once
    mean_curve = delta.mean(0)
    alpha, beta = pinv @ mean_curve
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, delta.shape[0], size=(num_bootstrap, delta.shape[0]))
    boot = delta[picks].mean(1) @ pinv.T  # (B, 2)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    peak_d = float(peak_distance(alpha, beta, form))
    boot_peak = peak_distance(boot[:, 0], boot[:, 1], form) ** 2
    peak_gain = None if math.isinf(peak_d) else float(gao_curve([peak_d], alpha, beta, form)[0])
    return GaoFit(
        form=form,
        alpha=float(alpha),
        beta=float(beta),
        alpha_ci=tuple(float(v) for v in np.percentile(boot[:, 0], q)),
        beta_ci=tuple(float(v) for v in np.percentile(boot[:, 1], q)),
        peak_kl=peak_d**2,
        # no interpolation: resamples that never turn have an infinite peak, and inf − inf is nan
        peak_kl_ci=tuple(float(v) for v in np.percentile(boot_peak, q, method="inverted_cdf")),
        peak_gain=peak_gain,
        peaked_fraction=float((boot[:, 1] > 0).mean()),
        max_kl=float(kl.max()),
        points=len(kl),
        prompts=delta.shape[0],
        level=level,
        residual_rms=float(np.sqrt(np.mean((X @ np.array([alpha, beta]) - mean_curve) ** 2))),
    )


def measured_fall(kl: Sequence[float], per_prompt: np.ndarray) -> dict:
    """Over-optimisation as measured, without a fit: from the point of highest mean J to the point
    of largest KL, the fall J(best) − J(largest KL) paired by prompt (``per_prompt``: P × K), with
    its standard error over prompts and ``z`` = fall / se (≥ 2: beyond noise)."""
    kl, per_prompt = np.asarray(kl, dtype=float), np.asarray(per_prompt, dtype=float)
    best, last = int(np.argmax(per_prompt.mean(0))), int(np.argmax(kl))
    fall, se = mean_and_se(per_prompt[:, best] - per_prompt[:, last])
    z = fall / se if se else None
    return {
        "best": best,
        "best_kl": float(kl[best]),
        "last": last,
        "last_kl": float(kl[last]),
        "fall": fall,
        "fall_se": se,
        "z": z,
    }


def rising_at(fit: GaoFit, kl: float) -> bool | None:
    """Is the fitted curve still rising at ``kl``? (None for an infinite KL.) Used to say whether Ĵ
    keeps rising where J peaks: reward hacking, by the fits."""
    if math.isinf(kl):
        return None
    d = math.sqrt(max(kl, 0.0))
    if fit.form == "bon":
        slope = fit.alpha - 2 * fit.beta * d
    else:
        slope = fit.alpha - fit.beta * ((math.log(d) if d > 0 else -math.inf) + 1)
    return bool(slope > 0)


# ---- points along a path, and their fits ------------------------------------------------------
def gao_form(method: str) -> str:
    """Which of Gao et al.'s forms a method's curve is fitted with: best-of-n's d(α − βd), or the RL
    form d(α − β log d) for every policy trained along a path (``method`` may carry its β: 'dpo β=0.1')."""
    return "bon" if method == "bon" else "rl"


def frontier_point(method: str, contexts: str, label: str, step: int, ev: PolicyEvaluation, baseline: dict) -> dict:
    """One evaluated policy as a frontier point, its ΔJ and ΔĴ paired by prompt with π_0's
    (``baseline``: {"J": (P,), "J_hat": (P,)}, π_0's per-prompt means)."""
    J = per_prompt_means(ev.oracle_rewards, ev.prompt_index, ev.num_prompts)
    J_hat = per_prompt_means(ev.proxy_rewards, ev.prompt_index, ev.num_prompts)
    return with_deltas(
        {
            "method": method,
            "contexts": contexts,
            "point": label,
            "step": step,
            "kl": ev.kl,
            "kl_se": ev.kl_se,
            "J": ev.J,
            "J_se": ev.J_se,
            "J_hat": ev.J_hat,
            "J_hat_se": ev.J_hat_se,
            "per_prompt_J": J.tolist(),
            "per_prompt_J_hat": J_hat.tolist(),
        },
        baseline,
    )


def with_deltas(point: dict, baseline: dict) -> dict:
    """``point`` with ``delta_J``, ``delta_J_hat`` and their standard errors over prompts, paired with ``baseline``."""
    for key in ("J", "J_hat"):
        point[f"delta_{key}"], point[f"delta_{key}_se"] = mean_and_se(paired_deltas([point], baseline, key)[:, 0])
    return point


def initial_points(method: str, baseline: dict[str, dict]) -> list[dict]:
    """π_0 itself (KL 0), one point per context set of ``baseline`` ({contexts: {"J", "J_hat"}})."""
    out = []
    for contexts, b in baseline.items():
        point = {"method": method, "contexts": contexts, "point": "π_0", "step": 0, "kl": 0.0, "kl_se": 0.0}
        point["per_prompt_J"], point["per_prompt_J_hat"] = np.asarray(b["J"]).tolist(), np.asarray(b["J_hat"]).tolist()
        point["J"], point["J_se"] = mean_and_se(b["J"])
        point["J_hat"], point["J_hat_se"] = mean_and_se(b["J_hat"])
        out.append(with_deltas(point, b))
    return out


def paired_deltas(points: list[dict], baseline: dict, key: str) -> np.ndarray:
    """(prompts, points): each prompt's J (``key``) at each point minus its J under π_0."""
    return np.stack([np.asarray(p[f"per_prompt_{key}"]) - np.asarray(baseline[key]) for p in points], 1)


def fit_points(points: list[dict], baseline: dict, num_bootstrap: int, seed: int) -> tuple[dict, list[str]]:
    """Gao et al.'s fit of J and of Ĵ for each (method, contexts) of ``points`` (form by
    :func:`gao_form`, against the points' KL), J's :func:`measured_fall`, and one line per fit saying
    where J peaks and whether Ĵ still rises there; a method whose points cannot be fitted says why.
    Returns ({method: {contexts: entry}}, lines)."""
    fits, lines = {}, []
    for method in dict.fromkeys(p["method"] for p in points):
        for contexts in dict.fromkeys(p["contexts"] for p in points):
            mine = [p for p in points if p["method"] == method and p["contexts"] == contexts]
            entry = {f"baseline_{k}": float(np.mean(baseline[contexts][k])) for k in ("J", "J_hat")}
            where = f"{method}, {contexts} contexts"
            kl = [p["kl"] for p in mine]
            fall = measured_fall(kl, paired_deltas(mine, baseline[contexts], "J"))
            entry["measured_fall"] = fall
            lines += [f"- {where}:", fall_line(fall, mine)]
            try:
                j, j_hat = (
                    fit_gao(
                        kl, paired_deltas(mine, baseline[contexts], key), gao_form(method), num_bootstrap, seed=seed
                    )
                    for key in ("J", "J_hat")
                )
            except ValueError as e:
                entry.update(J=None, J_hat=None, note=str(e))
                lines.append(f"  - no fit: {e}")
                fits.setdefault(method, {})[contexts] = entry
                continue
            entry["J"], entry["J_hat"] = j.to_dict(), j_hat.to_dict()
            rising = rising_at(j_hat, j.peak_kl)
            entry["J_hat_rising_at_J_peak"] = rising
            verdict = "" if rising is None else ("; Ĵ still rising there" if rising else "; Ĵ no longer rising there")
            lines += [f"  - fit of J: {j.describe('J')}{verdict}", f"  - fit of Ĵ: {j_hat.describe('Ĵ')}"]
            fits.setdefault(method, {})[contexts] = entry
    return fits, lines


def fall_line(fall: dict, points: list[dict]) -> str:
    """:func:`measured_fall` of ``points`` in words, as one indented line of a fit's description."""
    best, last = points[fall["best"]], points[fall["last"]]
    if fall["best"] == fall["last"]:
        return f"  - measured: J is highest at the largest KL ({last['point']}, KL {last['kl']:.3g}): no fall"
    se = "–" if fall["fall_se"] is None else f"{fall['fall_se']:.3f}"
    z = "" if fall["z"] is None else f" ({fall['z']:+.1f} se{', beyond noise' if fall['z'] >= 2 else ''})"
    return (
        f"  - measured: J is highest at {best['point']} (KL {best['kl']:.3g}) and falls by "
        f"{fall['fall']:+.3f} ± {se}{z} to the largest KL ({last['point']}, KL {last['kl']:.3g})"
    )


# ---- the picture -------------------------------------------------------------------------------
def plot_frontier(points: list[dict], reference: dict[str, list[dict]], fits: dict, path) -> None:
    """J (top) and Ĵ (bottom) against KL(π‖π_0), one column per context set, one line per method
    (±1 se), each method's Gao fit dashed, and the Eq. 17 reference curve of J in black.

    ``points``: dicts with ``method``, ``contexts``, ``kl``, ``J``, ``J_se``, ``J_hat``, ``J_hat_se``;
    ``reference``: {contexts: :func:`reference_curve` points}; ``fits``: {method: {contexts: {"J":
    GaoFit dict or None, "J_hat": …, "baseline_J": …, "baseline_J_hat": …}}}."""
    plt = pyplot()
    sets = list(dict.fromkeys(p["contexts"] for p in points))
    methods = list(dict.fromkeys(p["method"] for p in points))
    fig, axes = plt.subplots(2, len(sets), figsize=(6 * len(sets), 8), squeeze=False)
    for col, contexts in enumerate(sets):
        for row, (key, label) in enumerate([("J", "J: oracle R*"), ("J_hat", "Ĵ: reward model R_phi")]):
            ax = axes[row, col]
            for i, method in enumerate(methods):
                mine = sorted(
                    (p for p in points if p["method"] == method and p["contexts"] == contexts), key=lambda p: p["kl"]
                )
                kl = [p["kl"] for p in mine]
                ax.errorbar(
                    kl,
                    [p[key] for p in mine],
                    yerr=[p[f"{key}_se"] or 0 for p in mine],
                    fmt="o-",
                    color=f"C{i}",
                    capsize=2,
                    label=method,
                )
                fit = fits.get(method, {}).get(contexts, {})
                if fit.get(key) and kl:
                    d = np.sqrt(np.linspace(0, max(kl), 100))
                    f = fit[key]
                    ax.plot(
                        d**2,
                        fit[f"baseline_{key}"] + gao_curve(d, f["alpha"], f["beta"], f["form"]),
                        "--",
                        color=f"C{i}",
                        alpha=0.6,
                    )
            if key == "J" and contexts in reference:
                ref = reference[contexts]
                top = max((p["kl"] for p in points if p["contexts"] == contexts), default=0.0)
                shown = [p for p in ref if p["kl"] <= max(top, 1e-9) * 1.05] or ref[:1]
                kl, J = [p["kl"] for p in shown], [p["J"] for p in shown]
                if kl[-1] < top:  # the best J reachable never falls with more KL allowed: it holds
                    kl, J = [*kl, top], [*J, J[-1]]
                ax.plot(kl, J, "k-", lw=1.2, label="reference (Eq. 17, R*)")
            ax.set_title(f"{label}, {contexts} contexts")
            ax.set_xlabel("KL(π‖π_0) (nats)")
            ax.legend(fontsize=8)
    _save(fig, path)
