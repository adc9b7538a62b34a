"""Comparing methods over seeds and prompts, with the power to tell them apart (Section 7.9; the
"honest numbers" of the design notes).

A ``rlhflab compare`` run over S seeds gives, for each method and context set, an S × P matrix of
paired differences d_sp = J_method(seed s, prompt p) − J_π0(seed s, prompt p): each seed has its
own pool, reward model and training run, and every seed is evaluated on the same P prompts. Seeds
and prompts are therefore *crossed* random factors, and the matrix is read with the balanced
two-way random-effects model

    d_sp = μ + a_s + b_p + e_sp,   a_s ~ (0, σ²_seed), b_p ~ (0, σ²_prompt), e_sp ~ (0, σ²_residual)

(a_s: how the whole run came out — pool, reward model, training noise; b_p: how much this prompt
lets any method gain; e_sp: their interaction plus the sampling noise of the cell's few samples).
The mean over the matrix has variance σ²_seed/S + σ²_prompt/P + σ²_residual/(S·P). The components
are estimated by the ANOVA method of moments (equal to REML for balanced data while no estimate is
truncated at zero: the mixed-effects answer without an iterative fit), the interval is Student's t
with Satterthwaite's degrees of freedom, which with 3 seeds and a large seed component are few and
the interval honestly wide. With one seed the seed component cannot be seen (the interval is the
paired one over prompts, as :func:`rlhflab.evaluation.metrics.paired_difference` gives); with one
prompt, the prompt component.

The same components say what more budget would buy: :func:`resolving_budget` finds the smallest
number of seeds (prompts held) or of prompts (seeds held) at which an effect of the observed size
would have an interval excluding 0. With one dominant component this is the familiar
n · (t·se / |effect|)² scaling; where the other component alone keeps the interval over 0, more of
this one never suffices, and the answer says so.

Methods are compared at matched KL(π‖π_0), not matched steps: where a method has several evaluated
points along its path (PPO checkpoints, best-of-n for several n), :func:`value_at_kl` interpolates
each prompt's J at a common KL; a method with one point is compared at its own KL and flagged.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import t as student_t

from rlhflab.evaluation.tables import format_table

LEVEL = 0.95
MAX_SEEDS = 1000  # projections stop here: "not reachable" beyond
MAX_PROMPTS = 100_000


@dataclass
class VarianceComponents:
    """The crossed model's variances (None: not estimable from this design). With one seed the
    prompt component also holds the residual (they cannot be told apart); with one prompt, the seed
    component does."""

    seed: float | None
    prompt: float | None
    residual: float

    def variance_of_mean(self, seeds: int, prompts: int) -> float:
        """σ²_seed/S + σ²_prompt/P + σ²_residual/(S·P), an unknown component counted as 0."""
        return (self.seed or 0.0) / seeds + (self.prompt or 0.0) / prompts + self.residual / (seeds * prompts)

    def degrees_of_freedom(self, seeds: int, prompts: int) -> float:
        """Satterthwaite's degrees of freedom of :meth:`variance_of_mean` for an S × P design, from
        the mean squares these components imply (E MS_seed = σ²_e + P σ²_s, E MS_prompt = σ²_e + S σ²_p,
        E MS_residual = σ²_e)."""
        terms = []  # (coefficient × mean square, its degrees of freedom); their sum is S·P·variance
        if self.seed:
            terms.append((self.residual + prompts * self.seed, seeds - 1))
        if self.prompt:
            terms.append((self.residual + seeds * self.prompt, prompts - 1))
        residual_coefficient = 1 - len(terms)
        if self.residual and residual_coefficient:
            terms.append((residual_coefficient * self.residual, (seeds - 1) * (prompts - 1)))
        return _satterthwaite(terms)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _satterthwaite(terms: list[tuple[float, int]]) -> float:
    """(Σ c_i M_i)² / Σ (c_i M_i)² / df_i over ``terms`` of (c_i M_i, df_i); at least 1."""
    terms = [(value, df) for value, df in terms if value and df > 0]
    if not terms:
        return math.inf
    total = sum(value for value, _ in terms)
    return max(1.0, total**2 / sum(value**2 / df for value, df in terms))


@dataclass
class CrossedEstimate:
    """The mean of an S × P matrix of paired differences, with its standard error, Satterthwaite
    degrees of freedom and Student-t interval (None where the design gives no spread to judge by)."""

    mean: float
    se: float | None
    df: float | None
    ci: tuple[float, float] | None
    seeds: int
    prompts: int
    components: VarianceComponents | None
    level: float = LEVEL

    @property
    def beyond_noise(self) -> bool:
        """The interval excludes 0."""
        return self.ci is not None and (self.ci[0] > 0 or self.ci[1] < 0)

    @property
    def seed_share(self) -> float | None:
        """The seeds' share of the variance of the mean (None when it cannot be measured)."""
        c = self.components
        if c is None or c.seed is None or not self.se:
            return None
        return c.seed / self.seeds / self.se**2

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["beyond_noise"] = self.beyond_noise
        return out


def _t_quantile(level: float, df: float) -> float:
    return float(student_t.ppf((1 + level) / 2, df))


def crossed_mean(values, level: float = LEVEL) -> CrossedEstimate:
    """The mean of ``values`` (seeds × prompts, every cell filled) under the crossed random-effects
    model of this module, by the ANOVA method of moments:

        MS_seed = P Σ_s (m_s − m)² / (S − 1),  MS_prompt = S Σ_p (m_p − m)² / (P − 1),
        MS_residual = Σ_sp (d_sp − m_s − m_p + m)² / ((S − 1)(P − 1)),
        σ²_seed = max(0, MS_seed − MS_residual) / P,  σ²_prompt = max(0, MS_prompt − MS_residual) / S,

    se² = σ²_seed/S + σ²_prompt/P + MS_residual/(S·P) (without truncation, (MS_seed + MS_prompt −
    MS_residual)/(S·P), the unbiased estimate), interval mean ± t_df · se."""
    d = np.asarray(values, dtype=float)
    if d.ndim != 2 or d.size == 0 or np.isnan(d).any():
        raise ValueError(f"need a filled (seeds, prompts) matrix, got shape {d.shape}")
    seeds, prompts = d.shape
    mean = float(d.mean())
    if seeds * prompts < 2:
        return CrossedEstimate(mean, None, None, None, seeds, prompts, None, level)
    seed_means, prompt_means = d.mean(1), d.mean(0)
    if seeds == 1:
        components = VarianceComponents(None, float(prompt_means.var(ddof=1)), 0.0)
    elif prompts == 1:
        components = VarianceComponents(float(seed_means.var(ddof=1)), None, 0.0)
    else:
        ms_seed = prompts * float(((seed_means - mean) ** 2).sum()) / (seeds - 1)
        ms_prompt = seeds * float(((prompt_means - mean) ** 2).sum()) / (prompts - 1)
        residuals = d - seed_means[:, None] - prompt_means[None, :] + mean
        ms_residual = float((residuals**2).sum()) / ((seeds - 1) * (prompts - 1))
        components = VarianceComponents(
            max(0.0, ms_seed - ms_residual) / prompts, max(0.0, ms_prompt - ms_residual) / seeds, ms_residual
        )
    variance = components.variance_of_mean(seeds, prompts)
    if variance <= (1e-12 * max(1.0, abs(mean))) ** 2:  # every cell moved alike (to rounding): nothing to judge by
        return CrossedEstimate(mean, 0.0, None, None, seeds, prompts, components, level)
    se, df = math.sqrt(variance), components.degrees_of_freedom(seeds, prompts)
    half = _t_quantile(level, df) * se
    return CrossedEstimate(mean, se, df, (mean - half, mean + half), seeds, prompts, components, level)


def resolves(effect: float, components: VarianceComponents, seeds: int, prompts: int, level: float = LEVEL) -> bool:
    """Would an effect of size ``effect`` have an interval excluding 0 in an S × P design with these
    variance components?"""
    variance = components.variance_of_mean(seeds, prompts)
    if variance <= 0:
        return effect != 0
    return abs(effect) > _t_quantile(level, components.degrees_of_freedom(seeds, prompts)) * math.sqrt(variance)


def resolving_budget(estimate: CrossedEstimate, axis: str, limit: int | None = None) -> int | None:
    """The smallest number of ``axis`` ("seeds" or "prompts"), the other held at its present count,
    at which an effect of ``estimate``'s observed size would be beyond noise, the variance components
    held at their estimates; ``axis="both"``: the smallest number of seeds when the prompts grow in
    proportion (ceil(n·P/S)). None where none up to ``limit`` (default 1000 seeds / 100,000 prompts)
    would do — for one axis alone, the other's component can keep the interval over 0 whatever its
    count — or where the design cannot estimate the component an axis would shrink (more seeds, with
    one seed run). The interval narrows monotonically, so the answer is found by bisection."""
    c = estimate.components
    if c is None or estimate.mean == 0:
        return None
    S, P = estimate.seeds, estimate.prompts
    if axis in ("seeds", "both"):
        if c.seed is None:
            return None
        limit, current = limit or MAX_SEEDS, S
        size = (lambda n: (n, P)) if axis == "seeds" else (lambda n: (n, math.ceil(n * P / S)))
    elif axis == "prompts":
        if c.prompt is None:
            return None
        limit, size, current = limit or MAX_PROMPTS, lambda n: (S, n), P
    else:
        raise ValueError(f"axis must be 'seeds', 'prompts' or 'both', got {axis!r}")
    ok = lambda n: resolves(estimate.mean, c, *size(n), estimate.level)  # noqa: E731
    low = max(2, current)
    if ok(low):
        return low
    if not ok(limit):
        return None
    while limit - low > 1:  # ok(limit) and not ok(low)
        middle = (low + limit) // 2
        low, limit = (low, middle) if ok(middle) else (middle, limit)
    return limit


# ---- J at matched KL --------------------------------------------------------------------------
def value_at_kl(kls: Sequence[float], values, target: float) -> tuple[np.ndarray, float, bool]:
    """Each prompt's value where a method's path first reaches KL ``target``.

    ``kls``: KL(π‖π_0) of the path's K points in the order they were reached (π_0 first, at 0);
    ``values``: (K, P) each prompt's J at each point. On the first segment [k_i, k_i+1] that holds
    ``target`` the values are interpolated linearly, (1 − w)·v_i + w·v_i+1 with
    w = (target − k_i)/(k_i+1 − k_i). Returns (values at the target, the KL they are at, True); a path
    that never reaches ``target`` gives the point nearest it, its KL and False."""
    kls, values = np.asarray(kls, dtype=float), np.asarray(values, dtype=float)
    if values.ndim != 2 or len(kls) != values.shape[0] or len(kls) == 0:
        raise ValueError(f"need (points, prompts) values for {len(kls)} KL points, got shape {values.shape}")
    for i in range(len(kls) - 1):
        a, b = kls[i], kls[i + 1]
        if min(a, b) <= target <= max(a, b):
            w = 0.0 if a == b else (target - a) / (b - a)
            return (1 - w) * values[i] + w * values[i + 1], float(target), True
    if len(kls) == 1 and kls[0] == target:
        return values[0], float(target), True
    nearest = int(np.argmin(np.abs(kls - target)))
    return values[nearest], float(kls[nearest]), False


# ---- the summary over seeds ---------------------------------------------------------------------
def _matrix(runs: list[dict], method: str, contexts: str) -> tuple[np.ndarray, list[list[float]], list[np.ndarray]]:
    """(S, P) paired ΔJ of the method's final point, and per seed its path's KLs (π_0 first) and
    (K, P) per-prompt J along it minus π_0's."""
    finals, kls, paths = [], [], []
    for run in runs:
        baseline = np.asarray(run["paths"]["initial"][contexts][0]["per_prompt_J"], dtype=float)
        points = run["paths"][method][contexts]
        path = np.stack([np.zeros_like(baseline)] + [np.asarray(p["per_prompt_J"]) - baseline for p in points])
        finals.append(path[-1])
        kls.append([0.0] + [float(p["kl"]) for p in points])
        paths.append(path)
    return np.stack(finals), kls, paths


def summarize_seeds(
    runs: list[dict],
    matched_kl: float | None = None,
    prompt_limits: dict[str, int] | None = None,
    level: float = LEVEL,
) -> dict:
    """The over-seeds summary of a method comparison.

    ``runs``: one dict per seed with ``seed`` and ``paths`` = {method: {contexts: [points]}}, each
    point ``{"point", "kl", "per_prompt_J"}`` in the order the method reached it, its last the
    method's final policy; ``paths["initial"]`` holds π_0's one point (KL 0). Every seed must have
    the same methods and the same prompts. ``matched_kl``: the KL methods are compared at (default,
    per context set: the smallest mean final KL among the methods with more than one point; the
    methods with one point are compared at their own KL and flagged). ``prompt_limits``: how many
    prompts each context set could have at most, so a projection past it is said to be out of reach.

    Returns ``{"seeds", "level", "matched_kl": {contexts: κ}, "methods": {method: {contexts: {...}}},
    "pairs": [...]}``, each estimate a :class:`CrossedEstimate` dict with its ``budget`` (seeds and
    prompts that would resolve it)."""
    if not runs:
        raise ValueError("no runs to summarize")
    methods = [m for m in runs[0]["paths"] if m != "initial"]
    context_sets = list(runs[0]["paths"]["initial"])
    for run in runs:
        if [m for m in run["paths"] if m != "initial"] != methods:
            raise ValueError(f"seed {run['seed']} ran methods {list(run['paths'])}, seed {runs[0]['seed']} {methods}")
    out = {"seeds": [r["seed"] for r in runs], "level": level, "matched_kl": {}, "methods": {}, "pairs": []}
    at_matched: dict[str, dict[str, np.ndarray]] = {}
    for contexts in context_sets:
        data = {m: _matrix(runs, m, contexts) for m in methods}
        sizes = {d[0].shape[1] for d in data.values()}
        if len(sizes) != 1:
            raise ValueError(f"{contexts} contexts: seeds or methods were evaluated on different prompts ({sizes})")
        with_path = [m for m in methods if len(data[m][1][0]) > 2]
        target = matched_kl
        if target is None and with_path:  # every path starts at KL 0, so each seed's reaches this one
            # (a plug-in KL estimate of a policy that barely moved can come out below 0: matched at π_0 then)
            target = max(0.0, min(k[-1] for m in with_path for k in data[m][1]))
        out["matched_kl"][contexts] = target
        at_matched[contexts] = {}
        for method in methods:
            finals, kls, paths = data[method]
            entry = {
                "kl": float(np.mean([k[-1] for k in kls])),
                "points": len(kls[0]) - 1,
                "delta_J": _with_budget(crossed_mean(finals, level), contexts, prompt_limits),
            }
            if target is not None and len(kls[0]) > 2:
                interpolated = [value_at_kl(k, p, target) for k, p in zip(kls, paths)]
                matrix = np.stack([v for v, _, _ in interpolated])
                short = [run["seed"] for run, (_, _, reached) in zip(runs, interpolated) if not reached]
                entry["at_matched_kl"] = {
                    "kl": float(np.mean([kl for _, kl, _ in interpolated])),
                    "interpolated": True,
                    "seeds_short_of_kl": short,
                    "delta_J": crossed_mean(matrix, level).to_dict(),
                }
            else:
                matrix = finals
                entry["at_matched_kl"] = {
                    "kl": entry["kl"],
                    "interpolated": False,
                    "seeds_short_of_kl": [],
                    "delta_J": entry["delta_J"],
                }
            at_matched[contexts][method] = matrix
            out["methods"].setdefault(method, {})[contexts] = entry
        for a, b in itertools.combinations(methods, 2):
            estimate = _with_budget(
                crossed_mean(at_matched[contexts][a] - at_matched[contexts][b], level), contexts, prompt_limits
            )
            flagged = [m for m in (a, b) if not out["methods"][m][contexts]["at_matched_kl"]["interpolated"]]
            out["pairs"].append({"a": a, "b": b, "contexts": contexts, "at_own_kl": flagged, "difference": estimate})
    return out


def _with_budget(estimate: CrossedEstimate, contexts: str, prompt_limits: dict[str, int] | None) -> dict:
    out = estimate.to_dict()
    out["seed_share"] = estimate.seed_share
    limit = (prompt_limits or {}).get(contexts)
    prompts, both = resolving_budget(estimate, "prompts"), resolving_budget(estimate, "both")
    out["budget"] = {
        "seeds": resolving_budget(estimate, "seeds"),
        "prompts": prompts,
        "both": None if both is None else [both, math.ceil(both * estimate.prompts / estimate.seeds)],
        "prompt_limit": limit,
        "prompts_within_limit": prompts is not None and (limit is None or prompts <= limit),
    }
    return out


# ---- words ------------------------------------------------------------------------------------------
def _interval(e: dict) -> str:
    if e["ci"] is None:
        return f"{e['mean']:+.3f}"
    low, high = e["ci"]
    return f"{e['mean']:+.3f} [{low:+.3f}, {high:+.3f}]"


def budget_words(e: dict) -> tuple[bool, str]:
    """What would tell an effect of this size from noise, the variance components held: (whether any
    evaluation budget within reach would, and in words which: more seeds, more prompts, both)."""
    b, c = e["budget"], e["components"] or {}
    if e["mean"] == 0:
        return False, "the estimate is 0: there is no effect for more evaluation to resolve"
    reach, cannot = [], []
    if b["seeds"] is not None:
        reach.append(f"{b['seeds']} seeds at {e['prompts']} prompts (--seeds 0-{b['seeds'] - 1})")
    elif c.get("seed") is not None:
        cannot.append("more seeds alone would not")
    if b["prompts"] is not None:
        over = b["prompt_limit"] is not None and b["prompts"] > b["prompt_limit"]
        reach.append(
            f"{b['prompts']} prompts at {e['seeds']} seed{'s' * (e['seeds'] > 1)} (--eval_prompts {b['prompts']}"
            + (f"; more than the {b['prompt_limit']} this context set has)" if over else ")")
        )
    elif c.get("prompt") is not None:
        cannot.append("more prompts alone would not")
    if b.get("both") is not None and (b["seeds"] is None or b["prompts"] is None):
        over = b["prompt_limit"] is not None and b["both"][1] > b["prompt_limit"]
        limit = f" (more prompts than the {b['prompt_limit']} this context set has)" if over else ""
        reach.append(f"{b['both'][0]} seeds × {b['both'][1]} prompts together{limit}")
    if e["seeds"] == 1:
        cannot.append("the seed-to-seed spread is unmeasured with one seed (--seeds 0-2 measures it)")
    if not reach:
        return False, (
            f"no evaluation budget up to {MAX_SEEDS} seeds or {MAX_PROMPTS} prompts would show an effect this "
            "small: a larger training budget is what is short" + "".join(f"; {w}" for w in cannot if "unmeasured" in w)
        )
    return True, " or ".join(reach) + "".join(f"; {w}" for w in cannot)


def effect_line(where: str, e: dict) -> str:
    """One line: the estimate, its interval, and beyond noise or what budget would show it."""
    pct = f"{100 * e['level']:.0f}%"
    design = f"{e['seeds']} seed{'s' * (e['seeds'] > 1)} × {e['prompts']} prompts"
    if e["se"] is None or e["se"] == 0:
        return f"- {where}: {e['mean']:+.3f} alike in every cell of {design}: no spread to judge it against."
    share = "" if e.get("seed_share") is None else f", seeds {100 * e['seed_share']:.0f}% of its variance"
    head = f"- {where}: {_interval(e)} ({pct} CI; se {e['se']:.3f}, df {e['df']:.1f}{share}; {design})"
    if e["beyond_noise"]:
        return head + ": beyond noise."
    reachable, words = budget_words(e)
    if reachable:
        return head + f": short of budget — an effect of this size would be beyond noise with {words}."
    return head + f": short of budget — {words}."


def verdict(entry_by_set: dict[str, dict]) -> str:
    """A method's table cell: beyond noise on every context set, on some, or short of budget."""
    beyond = [c for c, entry in entry_by_set.items() if entry["delta_J"]["beyond_noise"]]
    if len(beyond) == len(entry_by_set):
        return "beyond noise"
    if not beyond:
        return "short of budget"
    short = [c for c in entry_by_set if c not in beyond]
    return f"beyond noise on {', '.join(beyond)}; short on {', '.join(short)}"


def summary_rows(summary: dict) -> list[dict]:
    """One table row per method: KL, ΔJ on each context set with its interval, ΔJ at the matched KL,
    the number of path points and the verdict."""
    rows = []
    for method, by_set in summary["methods"].items():
        row = {"method": method, "verdict": verdict(by_set)}
        for contexts, entry in by_set.items():
            matched = entry["at_matched_kl"]
            row[f"kl_{contexts}"] = entry["kl"]
            row[f"delta_J_{contexts}"] = _interval(entry["delta_J"])
            flag = "" if matched["interpolated"] else " †"
            short = " ‡" if matched["seeds_short_of_kl"] else ""
            row[f"matched_{contexts}"] = f"{_interval(matched['delta_J'])} @ {matched['kl']:.2f}{flag}{short}"
            row["points"] = entry["points"]
        rows.append(row)
    return rows


def summary_columns(context_sets: Sequence[str], level: float = LEVEL) -> list[tuple[str, str, str]]:
    pct = f"{100 * level:.0f}%"
    columns = [("method", "method", "")]
    for c in context_sets:
        columns += [(f"kl_{c}", f"KL {c}", ".2f"), (f"delta_J_{c}", f"ΔJ {c} [{pct} CI]", "")]
    columns += [(f"matched_{c}", f"ΔJ {c} at matched KL", "") for c in context_sets]
    return columns + [("points", "points", "d"), ("verdict", "verdict", "")]


def pair_rows(summary: dict) -> list[dict]:
    """One row per method pair and context set: the difference of J at matched KL, and whether this
    design tells them apart (or what would)."""
    rows = []
    for pair in summary["pairs"]:
        e = pair["difference"]
        if e["beyond_noise"]:
            words = "told apart"
        elif e["se"] in (None, 0):
            words = "no spread to judge by"
        else:
            reachable, budget = budget_words(e)
            words = ("cannot tell apart; would need " if reachable else "cannot tell apart; ") + budget
        own = f" († {', '.join(pair['at_own_kl'])} at own KL)" if pair["at_own_kl"] else ""
        rows.append(
            {
                "pair": f"{pair['a']} − {pair['b']}",
                "contexts": pair["contexts"],
                "difference": _interval(e) + own,
                "verdict": words,
            }
        )
    return rows


PAIR_COLUMNS = [
    ("pair", "pair", ""),
    ("contexts", "contexts", ""),
    ("difference", "J difference at matched KL [CI]", ""),
    ("verdict", "can this design tell them apart?", ""),
]


def effect_lines(summary: dict) -> list[str]:
    """The power statement: one :func:`effect_line` per method and context set (ΔJ of the final
    policy against π_0)."""
    return [
        effect_line(f"{method}, {contexts}", entry["delta_J"])
        for method, by_set in summary["methods"].items()
        for contexts, entry in by_set.items()
    ]


def summary_markdown(summary: dict, design: str) -> str:
    """The summary as Markdown: the method table, the power statement per method and context set,
    and the pairs table; ``design`` says in a sentence what the seeds and prompts were."""
    context_sets = list(summary["matched_kl"])
    pct = f"{100 * summary['level']:.0f}%"
    matched = ", ".join(f"{c} {'–' if kl is None else format(kl, '.3f')}" for c, kl in summary["matched_kl"].items())
    legend = (
        f"{design} Each interval is {pct}, over seeds × prompts as crossed random effects (method-of-moments "
        "variance components, Student t with Satterthwaite's degrees of freedom; see "
        "`rlhflab.evaluation.comparison`). KL: mean final KL(π‖π_0) over seeds. Matched KL (the smallest final "
        f"KL of any seed among the methods with several evaluated points, unless --matched_kl): {matched}; each "
        "prompt's J is interpolated along the method's path there. † one evaluated point: compared at its own KL. "
        "‡ some seed's path never reached the matched KL: its nearest point is used."
    )
    return (
        f"## Over seeds and prompts\n\n{legend}\n\n"
        + format_table(summary_rows(summary), summary_columns(context_sets, summary["level"]))
        + "\n\n## Beyond noise? (each method's ΔJ against π_0)\n\n"
        + "\n".join(effect_lines(summary))
        + "\n\n## Can this design tell the methods apart? (J at matched KL)\n\n"
        + format_table(pair_rows(summary), PAIR_COLUMNS)
        + "\n"
    )
