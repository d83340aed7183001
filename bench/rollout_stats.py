"""Rollout statistics: the always-valid mSPRT against a naive z-test checked at every look, side by side.

A rollout looks at its data at every sensor tick. Simulated canaries at the 5% step, a look every 200
interactions (10 challenger, 190 stable), up to `--looks` looks; reward is a pass rate (0/1 per interaction),
stable 0.85. Both tests see the same simulated streams (seeded), one-sided at α = 0.05:

* the mSPRT: `continuum_pipeline.rollout.stats` (the functions `decide` uses at each look, vectorised over
  the simulations), τ = 0.05;
* the naive test: the fixed-horizon Wald z-test z = (Δ̂ + m)/√V against 1.645 (V from the observed rates),
  checked at every look.

Part 1, the statistic (margin m = 0, "the challenger is worse"): the false-positive rate on A/A streams
(0.85 vs 0.85) and the challenger interactions needed to detect a five-point drop (0.85 → 0.80).

Part 2, the canary's first step under the rollout's rule (rollout.decide, the default policy's reward rule:
max_change m = 0.05, 200 challenger interactions at least): roll back when shown worse than −m, advance to
25% when shown within −m, else hold. Per challenger quality, the share of canaries rolled back and the share
that reached 25%, and the median challenger interactions to the decision. The naive rule is the same with the
z-test in place of the mSPRT.

Targets (printed `met` or `MISSED`): mSPRT A/A false-positive rate ≤ α (within three standard errors of the
simulation); a five-point drop is stopped before the canary reaches 25% (≥ 1 − α of canaries, rollout rule).
A note compares the median detection with the first step's minimum, the budget a canary that advanced on its
minimum alone would have. Writes bench/results/rollout_stats.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from continuum_pipeline.rollout.policy import RolloutSpec  # noqa: E402
from continuum_pipeline.rollout.stats import look_p  # noqa: E402

ALPHA = 0.05
Z_ALPHA = 1.6448536269514722  # one-sided 5% normal quantile
PER_LOOK_CHALLENGER, PER_LOOK_STABLE = 10, 190  # the 5% step, a look every 200 interactions
STABLE_RATE = 0.85
TAU = 0.05


def streams(rng: np.random.Generator, p_challenger: float, sims: int, looks: int):
    """Running sums (n, Σx, Σx²) per arm, per simulation and look, for 0/1 outcomes."""
    xc = rng.binomial(PER_LOOK_CHALLENGER, p_challenger, (sims, looks)).cumsum(axis=1)
    xs = rng.binomial(PER_LOOK_STABLE, STABLE_RATE, (sims, looks)).cumsum(axis=1)
    nc = PER_LOOK_CHALLENGER * np.arange(1, looks + 1)
    ns = PER_LOOK_STABLE * np.arange(1, looks + 1)
    return ns, xs, xs, nc, xc, xc


def first_look(hit: np.ndarray) -> np.ndarray:
    """Index of each simulation's first True look; the number of looks where there is none."""
    return np.where(hit.any(axis=1), hit.argmax(axis=1), hit.shape[1])


def naive_z(sums, margin: float) -> np.ndarray:
    """The fixed-horizon Wald statistic (Δ̂ + m)/√V, V from the observed rates."""
    ns, xs, _, nc, xc, _ = sums
    ps, pc = xs / ns, xc / nc
    v = ps * (1 - ps) / ns + pc * (1 - pc) / nc
    return (pc - ps + margin) / np.sqrt(np.where(v > 0, v, np.inf))


def worse_hits(sums, margin: float, test: str) -> np.ndarray:
    if test == "msprt":
        return np.minimum.accumulate(look_p("rate", -margin, "less", TAU, *sums), axis=1) <= ALPHA
    return naive_z(sums, margin) < -Z_ALPHA


def within_hits(sums, margin: float, test: str) -> np.ndarray:
    if test == "msprt":
        return np.minimum.accumulate(look_p("rate", -margin, "greater", TAU, *sums), axis=1) <= ALPHA
    return naive_z(sums, margin) > Z_ALPHA


def median_n(looks_idx: np.ndarray, looks: int) -> float | None:
    done = looks_idx[looks_idx < looks]
    return float(np.median((done + 1) * PER_LOOK_CHALLENGER)) if done.size else None


def canary(rng, p_challenger: float, sims: int, looks: int, margin: float, min_n: int) -> dict:
    sums = streams(rng, p_challenger, sims, looks)
    out = {}
    for test in ("msprt", "naive"):
        back = first_look(worse_hits(sums, margin, test))
        ahead = first_look(within_hits(sums, margin, test) & (sums[3] >= min_n))
        rolled, advanced = back < np.minimum(ahead, looks), ahead < np.minimum(back, looks)
        decided = np.where(rolled, back, np.where(advanced, ahead, looks))
        out[test] = {"rolled_back": float(rolled.mean()), "reached_25": float(advanced.mean()),
                     "held": float(1.0 - rolled.mean() - advanced.mean()),
                     "median_challenger_n_to_decision": median_n(decided, looks)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sims", type=int, default=2000, help="simulated rollouts per row (default 2000)")
    ap.add_argument("--looks", type=int, default=400, help="looks per rollout (default 400: 4,000 challenger "
                                                           "interactions, 80,000 in all)")
    ap.add_argument("--per-day", type=int, default=250, help="the demo's traffic per simulated day (default 250: "
                                                             "scenario/demo.py DemoSize.after_change_per_day)")
    ap.add_argument("--seed", type=int, default=20261122)
    args = ap.parse_args()
    if args.sims < 1000:
        ap.error("--sims must be at least 1000 (the false-positive rate's standard error is then ≤ 0.007)")
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    spec = RolloutSpec()
    margin, min_n = spec.metrics["reward"].max_change, spec.min_interactions_per_step
    first_share = spec.steps[0]

    # Part 1: the statistic.
    sums = streams(rng, STABLE_RATE, args.sims, args.looks)
    fpr = {t: float(worse_hits(sums, 0.0, t).any(axis=1).mean()) for t in ("msprt", "naive")}
    sums = streams(rng, STABLE_RATE - 0.05, args.sims, args.looks)
    detect = {}
    for t in ("msprt", "naive"):
        idx = first_look(worse_hits(sums, 0.0, t))
        detect[t] = {"share": float((idx < args.looks).mean()), "median_challenger_n": median_n(idx, args.looks)}

    # Part 2: the canary's first step under the rollout's rule.
    rows = {label: canary(rng, p, args.sims, args.looks, margin, min_n)
            for label, p in (("equal (0.85)", 0.85), ("5 points worse (0.80)", 0.80),
                             ("10 points worse (0.75)", 0.75), ("30 points worse (0.55)", 0.55))}
    wall = time.perf_counter() - t0

    se = math.sqrt(ALPHA * (1 - ALPHA) / args.sims)
    print(f"Rollout statistics: mSPRT (always valid, τ = {TAU}) vs a naive z-test checked at every look; "
          f"α = {ALPHA} one-sided")
    print(f"{args.sims:,} simulated canaries per row at the {first_share:.0%} step, a look every "
          f"{PER_LOOK_CHALLENGER + PER_LOOK_STABLE} interactions ({PER_LOOK_CHALLENGER} challenger), up to "
          f"{args.looks * PER_LOOK_CHALLENGER:,} challenger interactions; reward = pass rate, stable {STABLE_RATE}")
    per_day_challenger = args.per_day * first_share
    print(f"Traffic assumption: the demo's {args.per_day} interactions per simulated day, {first_share:.0%} of "
          f"them ({per_day_challenger:g}) to the challenger at the first step; the step needs {min_n} challenger "
          f"interactions ({min_n / first_share:,.0f} in all) and {spec.min_minutes_per_step:g} minutes "
          f"(time is not simulated here)")

    def days(n: float | None) -> str:
        return "—" if n is None else f"{n:,.0f} ({n / first_share:,.0f} in all, {n / per_day_challenger:.0f} days)"

    w = 44
    print(f"\nPart 1 — the statistic, H1: the challenger is worse (margin 0)\n{'':{w}} {'mSPRT':>30} "
          f"{'naive z, every look':>30}")
    print(f"{'false-positive rate, A/A 0.85 vs 0.85':{w}} {fpr['msprt']:>30.4f} {fpr['naive']:>30.4f}")
    ratio = fpr["naive"] / fpr["msprt"] if fpr["msprt"] else math.inf
    print(f"{'ratio naive / mSPRT':{w}} {ratio:>30.1f}×")
    print(f"{'0.85 → 0.80 detected within the horizon':{w}} {detect['msprt']['share']:>30.3f} "
          f"{detect['naive']['share']:>30.3f}")
    print(f"{'median challenger interactions to detect':{w}} {days(detect['msprt']['median_challenger_n']):>30} "
          f"{days(detect['naive']['median_challenger_n']):>30}")

    print(f"\nPart 2 — the canary's {first_share:.0%} step under the rollout's rule (reward max_change {margin}, "
          f"≥ {min_n} challenger interactions to advance)")
    print(f"{'challenger':<24}{'test':<8}{'rolled back':>13}{'reached 25%':>13}{'held':>8}"
          f"{'median challenger n to decide':>32}")
    for label, r in rows.items():
        for t in ("msprt", "naive"):
            m = r[t]["median_challenger_n_to_decision"]
            print(f"{label if t == 'msprt' else '':<24}{t:<8}{r[t]['rolled_back']:>13.3f}{r[t]['reached_25']:>13.3f}"
                  f"{r[t]['held']:>8.3f}{'—' if m is None else f'{m:,.0f}':>32}")
    print("(held: neither shown worse nor shown within the allowance by the horizon; medians over decided canaries)")

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    five = rows["5 points worse (0.80)"]["msprt"]
    median = detect["msprt"]["median_challenger_n"]
    targets = [
        (f"mSPRT A/A false-positive rate ≤ α ({fpr['msprt']:.4f} ≤ {ALPHA} + 3 SE {3 * se:.4f}; naive "
         f"{fpr['naive']:.3f})", fpr["msprt"] <= ALPHA + 3 * se),
        (f"a 5-point drop stops before the canary reaches 25% (rollout rule: {1 - five['reached_25']:.3f} of "
         f"canaries ≥ 1 − α)", five["reached_25"] <= ALPHA + 3 * se),
    ]
    print("\nTargets")
    for text, ok in targets:
        print(f"  {verdict(ok):<7} {text}")
    equal = rows["equal (0.85)"]["msprt"]["median_challenger_n_to_decision"]
    print(f"Note: a canary that advanced on its minimum of {min_n} challenger interactions alone would reach 25% "
          f"before the mSPRT's median detection of a 5-point drop ({median if median is None else f'{median:,.0f}'}); "
          f"the rollout's rule holds until the challenger is shown within its allowance (an equal one: median "
          f"{equal if equal is None else f'{equal:,.0f}'}), so a worse one stays at {first_share:.0%}.")
    print(f"\n({wall:.1f} s)")

    out = Path(__file__).resolve().parent / "results" / "rollout_stats.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"sims": args.sims, "looks": args.looks, "alpha": ALPHA, "tau": TAU,
                               "false_positive_rate": fpr, "ratio_naive_over_msprt": ratio,
                               "detect_5_point_drop": detect, "canary_first_step": rows,
                               "targets": [{"target": t, "met": ok} for t, ok in targets],
                               "wall_s": wall}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
