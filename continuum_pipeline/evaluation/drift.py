"""Drift: has the task's traffic moved away from what the champion learned from?

Today's user turns (the latest day of the task's interactions, less those the champion trained on) against the
champion's training interactions (its `model_lineage` rows, roles train and validation). Two statistics, both
reported, either decides:

- the slice mix: a population-stability index per slice field (a `metadata` key: the task's
  `triggers.drift.slice_field`, or its golden sets' `metadata.*` slices), PSI = Σ (p − q)·ln(p / q) over the slices,
  p today's share, q the training share, an empty slice counted as EPSILON; the largest over the fields decides;
- the inputs: the cosine distance between the mean user-turn embeddings, read from the task's embeddings cache
  (curation/embeddings.py). Nothing is embedded here: a turn without a cached vector is counted, not guessed.

Each evaluation's numbers go to the lake table `<task>__drift_daily`, one row per day and champion version.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from continuum_pipeline.curation.embeddings import text_hash, user_turn
from continuum_pipeline.evaluation.triggers import Decision, served_by
from continuum_pipeline.lake.catalog import Lake
from continuum_pipeline.lake.schemas import TS, TableLayout

EPSILON = 1e-4  # the share of a slice one side never saw: keeps ln(p/q) finite, the shift still counts
NO_SLICE = "(none)"  # an interaction without the slice field is a slice of its own


# --- the statistics ----------------------------------------------------------------------------------------------

def shares(counts: Mapping[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


def psi(expected: Mapping[str, int], actual: Mapping[str, int], epsilon: float = EPSILON) -> float:
    """Population-stability index of `actual` (today's counts per slice) against `expected` (the training's)."""
    p, q = shares(actual), shares(expected)
    total = 0.0
    for k in sorted(set(p) | set(q)):
        pk, qk = max(p.get(k, 0.0), epsilon), max(q.get(k, 0.0), epsilon)
        total += (pk - qk) * np.log(pk / qk)
    return float(total)


def centroid_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine distance (1 − cosine similarity) between the mean rows of two embedding matrices."""
    ca, cb = np.asarray(a, np.float64).mean(axis=0), np.asarray(b, np.float64).mean(axis=0)
    norm = np.linalg.norm(ca) * np.linalg.norm(cb)
    if norm == 0:
        raise ValueError("a centroid of zero vectors has no direction: the embeddings are empty or cancel out")
    return float(1.0 - ca @ cb / norm)


@dataclass(frozen=True)
class SliceShift:
    field: str  # `metadata.<key>`
    psi: float
    today: dict[str, int]
    trained: dict[str, int]


@dataclass
class DriftReport:
    day: date
    champion: str  # the version
    n_today: int  # the day's interactions the champion did not train on
    n_trained: int  # its training interactions still in the lake
    slices: list[SliceShift] = field(default_factory=list)
    centroid_distance: float | None = None
    embedder: str | None = None
    embedded_today: int = 0
    embedded_trained: int = 0

    @property
    def worst(self) -> SliceShift | None:
        return max(self.slices, key=lambda s: s.psi, default=None)

    @property
    def psi(self) -> float | None:
        return self.worst.psi if self.worst else None


def decide(report: DriftReport, spec) -> Decision:
    """Fire when the slice PSI or the centroid distance passes its threshold (`spec`: a DriftSpec), each only with
    at least `spec.min_interactions` on both sides. The key names the champion and the day: once per cause."""
    who = served_by(report.champion)
    key = f"drift:{who}:{report.day}"
    if not report.n_today:
        return Decision(False, f"{who}: no interactions on {report.day} it did not train on")
    if not report.n_trained:
        return Decision(False, f"{who}: none of its training interactions is in the lake (no model_lineage rows, "
                               "or forgotten): nothing to compare with")
    head = f"{who} on {report.day}: {report.n_today} interactions it did not train on vs {report.n_trained} it did"
    parts, fired = [], []
    if report.worst is None:
        parts.append("no slice field (set triggers.drift.slice_field or a golden set's metadata.* slices)")
    elif min(report.n_today, report.n_trained) < spec.min_interactions:
        parts.append(f"slice PSI {report.psi:.3f} not deciding (< {spec.min_interactions} interactions)")
    else:
        over = report.psi > spec.psi_threshold
        parts.append(f"slice PSI {report.psi:.3f} on {report.worst.field} ({'>' if over else '≤'} {spec.psi_threshold})")
        if over:
            fired.append("slice mix")
    embedded = (f"{report.embedded_today}/{report.n_today} today, {report.embedded_trained}/{report.n_trained} "
                "trained embedded")
    if report.centroid_distance is None:
        parts.append(f"no centroid ({embedded}: materialize the task's embeddings)")
    elif min(report.embedded_today, report.embedded_trained) < spec.min_interactions:
        parts.append(f"centroid distance {report.centroid_distance:.3f} not deciding ({embedded}, "
                     f"< {spec.min_interactions})")
    else:
        threshold = spec.centroid_threshold
        over = threshold is not None and report.centroid_distance > threshold
        parts.append(f"centroid distance {report.centroid_distance:.3f} "
                     f"({'>' if over else '≤'} {threshold if threshold is not None else 'no threshold'}; {embedded})")
        if over:
            fired.append("inputs")
    reason = f"{head}: {'; '.join(parts)}"
    if fired:
        reason = f"drift in the {' and '.join(fired)}: {reason}"
    return Decision(bool(fired), reason, key=key)


def with_new_data(decision: Decision, new: int) -> Decision:
    """Drift asks for a training only when there is something new to learn from: `new` dataset-eligible
    interactions the champion did not train on. Nothing retrains on unchanged data."""
    if not decision.fire:
        return decision
    if new <= 0:
        return Decision(False, f"{decision.reason}; no dataset-eligible interaction it did not train on: a training "
                               "would learn nothing new", decision.key)
    return Decision(True, f"{decision.reason}; {new} new dataset-eligible interactions", decision.key)


# --- reading the lake --------------------------------------------------------------------------------------------

@dataclass
class Turns:
    ids: list[str]
    texts: list[str]  # the user turn (what the embeddings cache is keyed by)
    slices: dict[str, list[str]]  # slice field → value per interaction


def slice_fields(task) -> list[str]:
    """`metadata.<key>` fields: the drift spec's, or the golden sets' metadata slices (in order, once)."""
    if task.triggers.drift.slice_field:
        return [f"metadata.{task.triggers.drift.slice_field}"]
    found: list[str] = []
    for golden in task.golden_sets:
        found += [s for s in golden.slices if s.startswith("metadata.") and s not in found]
    return found


def read_turns(lake: Lake, task, fields: Sequence[str], trained_ids: Sequence[str]) -> tuple[date | None, Turns,
                                                                                               Turns]:
    """(the latest day, its interactions not in `trained_ids`, the interactions in `trained_ids`) of the task:
    its selection over `interactions`, a call delivered twice counted once (as stg_interactions does)."""
    import duckdb

    from continuum_pipeline.task.config import field_sql

    def none() -> tuple[None, Turns, Turns]:
        return None, Turns([], [], {f: [] for f in fields}), Turns([], [], {f: [] for f in fields})

    if not lake.table_exists("interactions") or lake.table("interactions").current_snapshot() is None:
        return none()
    con = duckdb.connect()
    try:
        con.execute("set TimeZone = 'UTC'")  # days are UTC days, whatever the machine's zone
        lake.register_duckdb(con, "interactions", "interactions")
        con.register("trained_ids", pa.table({"interaction_id": pa.array(sorted(set(trained_ids)), pa.string())}))
        con.execute(f"""create temp table task_turns as select interaction_id, cast(ts as date) as day, messages,
                        {', '.join(f'{field_sql(f)} as s{k}' for k, f in enumerate(fields)) or 'null as s'}
                        from interactions where {task.selection_sql()}
                        qualify row_number() over (partition by interaction_id
                                                   order by ingested_at, segment, segment_line) = 1""")
        ((day,),) = con.execute("select max(day) from task_turns").fetchall()
        if day is None:
            return none()
        trained = "interaction_id in (select interaction_id from trained_ids)"
        today = con.sql(f"select * from task_turns where day = date '{day.isoformat()}' and not {trained} "
                        "order by interaction_id").to_arrow_table()
        seen = con.sql(f"select * from task_turns where {trained} order by interaction_id").to_arrow_table()
    finally:
        con.close()
    return day, _turns(today, fields), _turns(seen, fields)


def _turns(rows: pa.Table, fields: Sequence[str]) -> Turns:
    return Turns(rows["interaction_id"].to_pylist(), [user_turn(m) for m in rows["messages"].to_pylist()],
                 {f: [NO_SLICE if v is None else v for v in rows[f"s{k}"].to_pylist()] for k, f in enumerate(fields)})


def cached_vectors(groups: Sequence[Sequence[str]], table: pa.Table | None) -> tuple[str | None, list[np.ndarray]]:
    """Per group of texts, the cached vectors of those that have one, all of one embedder version (the one that
    covers the most texts: two centroids are only comparable in one space); texts without one are left out."""
    if table is None or not table.num_rows:
        return None, [np.empty((0, 0), np.float32) for _ in groups]
    hashes = [[text_hash(t) for t in texts] for texts in groups]
    wanted = set().union(*map(set, hashes))
    best, best_index, best_vectors = None, {}, []
    for version in sorted(set(table["embedder"].to_pylist())):
        mine = table.filter(pc.equal(table["embedder"], version))
        index = {h: i for i, h in enumerate(mine["text_hash"].to_pylist()) if h in wanted}
        if len(index) > len(best_index):
            best, best_index, best_vectors = version, index, mine["vector"]
    out = []
    for group in hashes:
        rows = [best_index[h] for h in group if h in best_index]
        out.append(np.asarray(best_vectors.take(rows).to_pylist(), np.float32) if rows
                   else np.empty((0, 0), np.float32))
    return best, out


def measure(lake: Lake, task, champion: str, trained_ids: Sequence[str]) -> DriftReport | None:
    """The drift of the task's latest day against the champion's training interactions; None without traffic."""
    fields = slice_fields(task)
    day, today, trained = read_turns(lake, task, fields, trained_ids)
    if day is None:
        return None
    report = DriftReport(day, champion, len(today.ids), len(trained.ids))
    if today.ids and trained.ids:
        report.slices = [SliceShift(f, psi(_count(trained.slices[f]), _count(today.slices[f])),
                                    _count(today.slices[f]), _count(trained.slices[f])) for f in fields]
    table_name = task.table("embeddings")
    cache = lake.read_arrow(table_name) if lake.table_exists(table_name) else None
    report.embedder, (now, then) = cached_vectors([today.texts, trained.texts], cache)
    report.embedded_today, report.embedded_trained = len(now), len(then)
    if len(now) and len(then):
        report.centroid_distance = centroid_distance(now, then)
    return report


def _count(values: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts


# --- the dashboard's table ---------------------------------------------------------------------------------------

DRIFT_DAILY = pa.schema([
    pa.field("day", pa.date32()),  # the day compared
    pa.field("champion_version", pa.string()),
    pa.field("psi", pa.float64()),  # the largest slice PSI (null: no slice field or no data on one side)
    pa.field("psi_field", pa.string()),  # the slice field it was measured over
    pa.field("slice_shares", pa.string()),  # JSON: field → {today: {slice: share}, trained: {slice: share}, psi}
    pa.field("centroid_distance", pa.float64()),  # null: no cached embeddings on one side
    pa.field("embedder", pa.string()),
    pa.field("n_today", pa.int64()),
    pa.field("n_trained", pa.int64()),
    pa.field("embedded_today", pa.int64()),
    pa.field("embedded_trained", pa.int64()),
    pa.field("fired", pa.bool_()),  # a threshold was passed
    pa.field("outcome", pa.string()),  # what the trigger did: the training it requested, or why not
    pa.field("evaluated_at", TS),
])
COMMIT_ATTEMPTS = 8


def drift_layout(task) -> TableLayout:
    return TableLayout(task.table("drift_daily"), DRIFT_DAILY, (),
                       "The drift sensor's latest evaluation per day and champion version: slice PSI and centroid "
                       "distance of the day's user turns against the champion's training interactions.")


def record(lake: Lake, task, report: DriftReport, decision: Decision, outcome: str,
           at: datetime | None = None) -> None:
    """Write the evaluation as the row of (day, champion version), replacing an earlier one: the sensor evaluates
    every few minutes, the dashboard wants the day's latest numbers."""
    from pyiceberg.exceptions import CommitFailedException
    from pyiceberg.expressions import And, EqualTo

    layout = drift_layout(task)
    lake.ensure_table(layout)
    detail = {s.field: {"psi": round(s.psi, 6), "today": shares(s.today), "trained": shares(s.trained)}
              for s in report.slices}
    row = pa.Table.from_pylist([{
        "day": report.day, "champion_version": report.champion, "psi": report.psi,
        "psi_field": report.worst.field if report.worst else None, "slice_shares": json.dumps(detail),
        "centroid_distance": report.centroid_distance, "embedder": report.embedder, "n_today": report.n_today,
        "n_trained": report.n_trained, "embedded_today": report.embedded_today,
        "embedded_trained": report.embedded_trained, "fired": decision.fire, "outcome": outcome[:500],
        "evaluated_at": at or datetime.now(UTC)}], schema=DRIFT_DAILY)
    this = And(EqualTo("day", report.day), EqualTo("champion_version", report.champion))
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # the day's first evaluation has no row to replace: expected
                warnings.filterwarnings("ignore", "Delete operation did not match any records")
                lake.table(layout.name).overwrite(row, overwrite_filter=this)
            return
        except CommitFailedException:  # another evaluation committed first: re-read and retry
            if attempt == COMMIT_ATTEMPTS - 1:
                raise
            time.sleep(0.02 * 2 ** min(attempt, 5))
