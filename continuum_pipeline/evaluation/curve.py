"""The learning curve: golden-set success per slice for the base model and every registered version, beside
what each version did in production (mean reward, cost per query) — as table rows, markdown and PNG plots.

Scores come from the gate's own judges on the gate's golden sets, so the curve and the gate measure the same
thing. Evaluating a model is the expensive part: results are cached per (model, golden set versions, metric,
judge version) in the task's `learning_curve` Iceberg table, and a new registration evaluates only itself.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from continuum_pipeline.lake.schemas import TS

LEARNING_CURVE = pa.schema([
    pa.field("model", pa.string()),  # "base" or "v<version>": the label people read
    pa.field("model_version", pa.string()),  # registered version; null for the base model
    pa.field("model_ref", pa.string()),  # cache identity: "<name>/<version>", or the base model's build hash / id
    pa.field("golden_set_versions", pa.string()),  # JSON {set: content version}
    pa.field("metric", pa.string()),
    pa.field("judge_version", pa.string()),
    pa.field("slice", pa.string()),
    pa.field("examples", pa.int64()),
    pa.field("success", pa.float64()),  # mean judge score in [0, 1]
    pa.field("evaluated_at", TS),
])
NOT_AVAILABLE = "n/a"


@dataclass(frozen=True)
class ModelToEvaluate:
    model: str  # label
    version: str | None
    ref: str  # cache identity
    path: str | Path | None  # model folder or hub id; None: production only (not evaluated)


@dataclass(frozen=True)
class Production:
    """What a model version did in production (the task's quality_daily rows summed over days)."""

    interactions: int
    mean_reward: float | None
    cost_per_query_usd: float | None  # None when no interaction reported a cost


def slice_success(scores: Sequence[float], slices: Sequence[Sequence[str]]) -> dict[str, tuple[int, float]]:
    """(examples, mean score) per slice; every item also counts in "all"."""
    by: dict[str, list[float]] = {}
    for score, names in zip(scores, slices, strict=True):
        for s in dict.fromkeys((*names, "all")):
            by.setdefault(s, []).append(float(score))
    return {s: (len(v), sum(v) / len(v)) for s, v in sorted(by.items(), key=lambda kv: (kv[0] != "all", kv[0]))}


def evaluate(model: ModelToEvaluate, examples: Sequence, judges: Mapping[str, Any],
             judge_versions: Mapping[str, str], golden_versions: str, now) -> list[dict]:
    """Answer the golden examples with the model once, score the answers with each metric's judge; cache rows."""
    from continuum_pipeline.evaluation import golden

    answers = golden.answer(model.path, examples)
    rows = []
    for metric, judge in judges.items():
        for s, (n, success) in slice_success(golden.score(judge, examples, answers), [e.slices for e in examples]).items():
            rows.append({"model": model.model, "model_version": model.version, "model_ref": model.ref,
                         "golden_set_versions": golden_versions, "metric": metric,
                         "judge_version": judge_versions[metric], "slice": s, "examples": n, "success": success,
                         "evaluated_at": now})
    return rows


def cached(rows: Sequence[dict], model: ModelToEvaluate, golden_versions: str,
           judge_versions: Mapping[str, str]) -> list[dict] | None:
    """The model's cached rows for these golden set versions and every metric's judge version, or None."""
    mine = [r for r in rows if r["model_ref"] == model.ref and r["golden_set_versions"] == golden_versions
            and judge_versions.get(r["metric"]) == r["judge_version"]]
    return mine if {r["metric"] for r in mine} == set(judge_versions) else None


def production(quality_daily: Sequence[dict]) -> dict[tuple[str, str | None], Production]:
    """(model, model_version) → production summary from quality_daily rows: reward weighted by interactions,
    cost per query over the interactions that reported a cost (the SQL sums nulls away)."""
    acc: dict[tuple[str, str | None], list[float]] = {}
    for r in quality_daily:
        a = acc.setdefault((r["model"], r["model_version"]), [0, 0.0, 0, 0.0, 0])
        n = int(r["interactions"] or 0)
        a[0] += n
        if r.get("mean_reward") is not None:
            a[1] += r["mean_reward"] * n
            a[2] += n
        if r.get("cost_usd") is not None:
            a[3] += r["cost_usd"]
            a[4] += n
    return {k: Production(int(a[0]), a[1] / a[2] if a[2] else None, a[3] / a[4] if a[4] else None)
            for k, a in acc.items()}


def table_rows(curve: Sequence[dict], served: Mapping[tuple[str, str | None], Production],
               order: Sequence[ModelToEvaluate]) -> list[dict]:
    """One dict per model in `order`: success per (metric) slice, then production mean reward, interactions and
    cost per query (None where there is nothing to say). Served models that are not in `order` (a teacher, an
    older production model) follow with production figures only. With one metric, columns are slice names;
    with several, `metric: slice`."""
    metrics = list(dict.fromkeys(r["metric"] for r in curve))
    out, matched = [], set()
    for m in order:
        row: dict[str, Any] = {"model": m.model, "version": m.version}
        for r in curve:
            if r["model_ref"] == m.ref:
                row[r["slice"] if len(metrics) == 1 else f"{r['metric']}: {r['slice']}"] = r["success"]
        prod = [(k, p) for k, p in served.items() if m.version is not None and k[1] == m.version]
        matched.update(k for k, _ in prod)
        row.update(_production_columns([p for _, p in prod]))
        out.append(row)
    for k, p in sorted(served.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        if k not in matched:
            out.append({"model": k[0] + (f" {k[1]}" if k[1] else ""), "version": None,
                        **_production_columns([p])})
    return out


def _production_columns(prods: Sequence[Production]) -> dict[str, Any]:
    n = sum(p.interactions for p in prods)
    rewarded = [(p.mean_reward, p.interactions) for p in prods if p.mean_reward is not None]
    costed = [(p.cost_per_query_usd, p.interactions) for p in prods if p.cost_per_query_usd is not None]
    weight = sum(w for _, w in rewarded)
    cost_weight = sum(w for _, w in costed)
    return {"production_interactions": n,
            "production_mean_reward": sum(v * w for v, w in rewarded) / weight if weight else None,
            "cost_per_query_usd": sum(v * w for v, w in costed) / cost_weight if cost_weight else None}


PRODUCTION_COLUMNS = ("production_mean_reward", "production_interactions", "cost_per_query_usd")


def slice_columns(rows: Sequence[dict]) -> list[str]:
    """The success columns of table_rows, "all" (or "<metric>: all") first."""
    names = list(dict.fromkeys(k for r in rows for k in r if k not in ("model", "version", *PRODUCTION_COLUMNS)))
    return sorted(names, key=lambda c: (not c.endswith("all"), c))


def overall(row: dict) -> float | None:
    """The row's overall success: slice "all" of its first metric."""
    return next((row[c] for c in slice_columns([row]) if c.endswith("all")), None)


def markdown(rows: Sequence[dict]) -> str:
    """The curve as a markdown table: one row per model, success per slice as a percentage, production figures;
    `n/a` where a model has no such figure (the base never served; no interaction reported a cost)."""
    columns = slice_columns(rows)

    def pct(v):
        return NOT_AVAILABLE if v is None else f"{v:.0%}"

    headers = ["model", *columns, "prod. mean reward", "prod. interactions", "cost/query $"]
    lines = ["| " + " | ".join(h.replace("|", "\\|") for h in headers) + " |",
             "|---|" + "--:|" * (len(headers) - 1)]
    for r in rows:
        cells = [r["model"], *(pct(r.get(c)) for c in columns),
                 NOT_AVAILABLE if r.get("production_mean_reward") is None else f"{r['production_mean_reward']:.3f}",
                 str(r.get("production_interactions") or 0),
                 NOT_AVAILABLE if r.get("cost_per_query_usd") is None else f"{r['cost_per_query_usd']:.6f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pareto_front(points: Sequence[tuple[str, float, float]]) -> list[str]:
    """Names of the (name, cost, success) points no other point beats: cheaper-or-equal and better-or-equal,
    strictly in one. Ordered by cost."""
    front = [p for p in points
             if not any(q[1] <= p[1] and q[2] >= p[2] and (q[1] < p[1] or q[2] > p[2]) for q in points)]
    return [p[0] for p in sorted(front, key=lambda p: (p[1], -p[2]))]


def _figure(width: float = 7, height: float = 4.5):
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.subplots()


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def success_png(rows: Sequence[dict], title: str) -> bytes:
    """Success per slice (one line each, "all" bold) across the evaluated models in order."""
    evaluated = [r for r in rows if overall(r) is not None]
    fig, ax = _figure()
    x = list(range(len(evaluated)))
    for c in slice_columns(evaluated):
        ys = [r.get(c) for r in evaluated]
        main = c.endswith("all")
        ax.plot(x, [float("nan") if y is None else y for y in ys], marker="o", label=c,
                linewidth=2.5 if main else 1, color="black" if main else None, alpha=1 if main else 0.7)
    ax.set_xticks(x, [r["model"] for r in evaluated])
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("golden-set success")
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    return _png(fig)


def cost_quality_png(rows: Sequence[dict], title: str) -> bytes | None:
    """Cost per query against overall success for the models that have both, the Pareto frontier marked; models
    that served but were not evaluated (a teacher) are dashed lines at their cost. None when no model has a cost."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    points = [(r["model"], r["cost_per_query_usd"], overall(r)) for r in rows
              if r.get("cost_per_query_usd") is not None and overall(r) is not None]
    served_only = [(r["model"], r["cost_per_query_usd"]) for r in rows
                   if r.get("cost_per_query_usd") is not None and overall(r) is None]
    if not points and not served_only:
        return None
    front = pareto_front(points)
    fig, ax = _figure(6.5, 4.5)
    for name, cost, success in points:
        on = name in front
        ax.scatter([cost], [success], s=60 if on else 30, c="#d62728" if on else "#7f7f7f", zorder=3)
        ax.annotate(name, (cost, success), textcoords="offset points", xytext=(5, 5), fontsize=8)
    by_name = {p[0]: p for p in points}
    if front:
        ax.step([by_name[n][1] for n in front], [by_name[n][2] for n in front], where="post", color="#d62728",
                label="Pareto frontier (no model is both cheaper and better)")
    for name, cost in served_only:
        ax.axvline(cost, color="#1f77b4", linestyle="--", linewidth=1)
        ax.annotate(f"{name} (served, not evaluated)", (cost, 0.5), rotation=90, fontsize=7, color="#1f77b4",
                    va="center", textcoords="offset points", xytext=(-10, 0))
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"${v:.2g}"))
    ax.margins(x=0.15)
    ax.set_xlabel("cost per query (USD, production)")
    ax.set_ylabel("golden-set success (all)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title)
    if front:
        ax.legend(loc="lower left", fontsize=7)
    return _png(fig)
