"""The whole loop with PII in it: every canary of pii_canaries.py, in several formats, in the prompts, responses,
agents' corrections and users' comments of right (high-reward) answers captured through @capture, then ingest,
labels, SQL models, dataset, a golden set held out from production, a tiny model pre-trained on that traffic,
training, the gate and registration — and afterwards no canary in any file under CONTINUUM_HOME: every Parquet
file of the warehouse (decoded, not the catalog), the datasets and golden sets, every MLflow artifact (the
tokenizer built from the traffic included), the landing files and the Dagster and MLflow databases. An
excluded user's interactions stay in the lake for monitoring but reach neither the dataset nor the golden set.

And the false-positive side: the support desk's traffic (order numbers, dates, prices, versions) curates to the
same dataset with redaction on as with it off, so redaction cannot change the demo's learning curve."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from continuum_pipeline import capture, feedback
from continuum_pipeline.lake.catalog import Lake
from continuum_pipeline.lake.ingest import ingest_landing
from continuum_pipeline.settings import Settings

from . import recipe_app
from .pii_canaries import CANARIES, PLACEHOLDER, all_canaries, canary_texts, needles

PREFIX = "recipe_answer"
EXCLUDED_USER = "opted-out-user"
RUN_CONFIG = {"ops": {f"{PREFIX}__base_model": {"config": {"pretrain_max_steps": 120}},
                      f"{PREFIX}__candidate_model": {"config": {"max_steps": 40, "threads": 1}}}}
TASK_YAML = {
    "type": "continuum_pipeline.FlywheelComponent",
    "attributes": {
        "name": PREFIX,
        "select": {"task": PREFIX},
        "base_model": {"id": "builtin:tiny"},  # pre-trained on the task's captured (redacted) traffic
        "judges": [{"name": "ingredients", "kind": "python",
                    "function": "continuum_pipeline_tests.recipe_app:ingredients_check"}],
        "golden_sets": [
            {"name": "golden", "file": str(recipe_app.TASK_DIR / "golden.jsonl"), "slices": ["metadata.cuisine"]},
            {"name": "prod", "from_production": {"size": 24, "min_reward": 0.9, "seed": 0}},
        ],
        # This test is about what reaches disk, not about the gate's verdict: it lets any candidate through.
        "gate": {"metrics": {"coverage": {"judge": "ingredients", "min_delta": -1.0}}},
        "curation": {"min_reward": 0.7, "validation_fraction": 0.0},
        "training": {"epochs": 1, "batch_size": 16, "lora": {"r": 8}},
        "triggers": {"schedule": None},
        "privacy": {"exclude": [{"name": "opted_out", "users": [EXCLUDED_USER]}]},
    },
}


def serve_pii_traffic(start: datetime) -> dict[str, int]:
    """Every canary text (4 formats per canary) placed once each as prompt, response, correction and comment of a
    right answer, round-robin; clean traffic around it; an excluded user's right answers. Returns counts."""
    rng = random.Random(7)
    texts = [t for t, _, _ in canary_texts()]
    places = ("prompt", "response", "correction", "comment")

    @capture(task=PREFIX, model="gpt-recipes", consent="granted")
    def answer(messages: list[dict], dish: str, ts: datetime, tail: str) -> str:
        capture.annotate(contexts=[recipe_app.card(dish)], ts=ts,
                         metadata={"dish": dish, "cuisine": recipe_app.RECIPES[dish][0],
                                   "kind": recipe_app.RECIPES[dish][1], "reference": recipe_app.answer_for(dish)})
        return recipe_app.answer_for(dish) + tail

    def one(i: int, text: str | None = None, place: str | None = None) -> str:
        dish = rng.choice(sorted(recipe_app.RECIPES))
        question = rng.choice(recipe_app.QUESTIONS).format(dish=dish.replace("_", " "))
        if place == "prompt":
            question = f"{question} {text}"
        messages = [{"role": "system", "content": "You answer cooking questions from the recipe cards."},
                    {"role": "user", "content": question}]
        answer(messages, dish, start + timedelta(minutes=i), f" {text}" if place == "response" else "")
        iid = capture.last_interaction_id()
        if place == "correction":
            feedback.record(iid, correction=f"{recipe_app.answer_for(dish)} {text}")
        elif place == "comment":
            feedback.record(iid, score=1.0, comment=text)
        feedback.record(iid, signal="copy")
        return iid

    n = 0
    for j, text in enumerate(texts):
        one(n, text, places[(j + j // 4) % 4])  # each canary's 4 formats land in 4 different places
        n += 1
    for _ in range(60):
        one(n)
        n += 1
    with capture.context(user_id=EXCLUDED_USER):
        for _ in range(12):
            one(n)
            n += 1
    return {"pii": len(texts), "all": n}


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


NEEDLES = sorted({n for _, value in all_canaries() for n in needles(value)})


def leaks_in_text(text: str) -> list[str]:
    return [n for n in NEEDLES if n in text or json.dumps(n)[1:-1] in text]


def leaks_in_table(table) -> list[str]:
    return leaks_in_text("\x00".join(_strings(table.to_pylist())))


def scan_home(home: Path) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Every file under `home`: Parquet decoded (its pages are compressed), weights skipped (float tensors),
    everything else searched as bytes (UTF-8, JSON-escaped too). Returns leaks per file and files per kind."""
    leaks: dict[str, list[str]] = {}
    scanned = {"parquet": 0, "other": 0, "weights": 0}
    for path in sorted(p for p in home.rglob("*") if p.is_file()):
        if path.suffix in (".safetensors", ".bin", ".pt"):
            scanned["weights"] += 1
            continue
        if path.suffix == ".parquet":
            scanned["parquet"] += 1
            found = leaks_in_table(pq.read_table(path))
        else:
            scanned["other"] += 1
            found = leaks_in_text(path.read_bytes().decode("utf-8", "ignore"))
        if found:
            leaks[str(path.relative_to(home))] = found[:3]
    return leaks, scanned


@pytest.mark.slow  # ~2 min on 2 shared cores: pre-training, training, gate and registration
def test_no_canary_reaches_any_file_of_the_loop_and_an_excluded_user_never_trains(settings, sdk, tmp_path,
                                                                                  monkeypatch):
    from continuum_pipeline.definitions import build_definitions
    from continuum_pipeline.registry import models

    task_dir = tmp_path / "privacy_task"
    task_dir.mkdir()
    (task_dir / "defs.yaml").write_text(json.dumps(TASK_YAML))
    monkeypatch.setenv("CONTINUUM_TASKS", str(task_dir))
    settings = Settings.from_env()
    defs = build_definitions(settings)
    counts = serve_pii_traffic(datetime.now(UTC) - timedelta(days=1))
    capture.flush()
    lake = Lake.from_settings(settings)
    ingest_landing(lake, settings.landing_dir)

    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    with dg.instance_for_test() as instance:
        result = dg.materialize([*assets, *defs.asset_checks], instance=instance, resources=defs.resources,
                                run_config=RUN_CONFIG,
                                # the task's flywheel as its training job selects it (the rollout is its sensor's)
                                selection=dg.AssetSelection.key_prefixes([PREFIX])
                                - dg.AssetSelection.groups(f"{PREFIX}_rollout") | dg.AssetSelection.groups("sql"))
        assert result.success
        version = models.champion(settings.mlflow_uri, f"continuum-{PREFIX.replace('_', '-')}")
        assert version is not None  # registered: the registry's artifacts are part of the scan
        dataset_meta = instance.get_latest_materialization_event(
            dg.AssetKey([PREFIX, "sft_dataset"])).asset_materialization.metadata

    interactions = lake.read_arrow("interactions")
    assert interactions.num_rows == counts["all"]
    dataset = lake.read_arrow(f"{PREFIX}__sft_dataset")
    golden = lake.read_arrow(f"{PREFIX}__golden__prod")
    # the PII-bearing answers trained, redacted: every kind's placeholder is in the dataset's messages
    text = "\x00".join(_strings(dataset.to_pylist()))
    assert {kind for kind in CANARIES if PLACEHOLDER[kind] in text} == set(CANARIES)
    assert leaks_in_table(dataset) == [] and leaks_in_table(golden) == [] and golden.num_rows == 24

    # the excluded user: in the lake (monitoring), right answers (reward ≥ the bar), yet in no dataset or golden set
    excluded = {r["interaction_id"] for r in interactions.to_pylist() if r["user_id"] == EXCLUDED_USER}
    rewards = {r["interaction_id"]: r["target_reward"] for r in lake.read_arrow(f"{PREFIX}__interaction_rewards").to_pylist()}
    assert len(excluded) == 12 and all(rewards[i] >= 0.7 for i in excluded)
    assert not excluded & set(dataset["interaction_id"].to_pylist())
    assert not excluded & set(golden["interaction_id"].to_pylist())
    assert dataset_meta["removed: excluded: opted_out"].value == 12

    # every file of the loop, read: no canary anywhere
    leaks, scanned = scan_home(settings.home)
    assert leaks == {}
    assert scanned["parquet"] > 10 and scanned["weights"] > 0
    artifacts = [p for p in settings.mlflow_artifacts.rglob("*") if p.is_file()]
    assert any(p.name == "tokenizer.json" for p in artifacts)  # the vocabulary built from the traffic was read


def test_the_support_desk_curates_to_the_same_dataset_with_redaction_on_and_off(tmp_path, monkeypatch):
    """Its order numbers, dates, prices and versions are not PII: no interaction of it records a redaction, and
    its curated rows (what training sees) are identical whether the redactor runs or not."""
    from continuum_pipeline.capture import WRITER
    from continuum_pipeline.capture.writer import WriterConfig
    from continuum_pipeline.curation.dataset import curate_sft
    from continuum_pipeline.defs.flywheel.curation import curation_policy
    from continuum_pipeline.judge.specs import JudgeEnvironment
    from continuum_pipeline.scenario import SupportDesk, load_scenario, simulate_traffic
    from continuum_pipeline.task.config import load_task_config

    from .conftest import REPO_ROOT, label_task, run_task_sql

    task = load_task_config(REPO_ROOT / "continuum_pipeline/scenario/defs/support_desk/defs.yaml")
    start = datetime(2026, 11, 1, tzinfo=UTC)
    previous = WRITER._config
    curated, redacted = {}, {}
    try:
        for mode in ("all", "none"):
            home = tmp_path / mode
            (home / "dagster").mkdir(parents=True)
            monkeypatch.setenv("CONTINUUM_HOME", str(home))
            monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
            monkeypatch.setenv("CONTINUUM_REDACT_KINDS", mode)
            settings = Settings.from_env()
            from continuum_pipeline.privacy.redact import redactor

            # the switch works: "all" redacts an email, "none" keeps it
            assert bool(redactor().redact("mail jane.doe+refunds@example.com")[1]) == (mode == "all")
            WRITER.configure(WriterConfig(settings.landing_dir, queue_size=100_000, segment_records=5_000,
                                          flush_seconds=0.05))
            desk = SupportDesk(load_scenario())
            for phase, seed in (("before", 1), ("after", 2)):
                simulate_traffic(desk, 150, phase, desk.teacher_serve(phase, seed=seed), model="teacher",
                                 model_version=None, who="teacher", seed=seed, start=start + timedelta(days=seed))
            capture.flush()
            lake = Lake.from_settings(settings)
            lake.ensure_tables()
            ingest_landing(lake, settings.landing_dir)
            label_task(lake, task, [spec.build(JudgeEnvironment()) for spec in task.judges])
            run_task_sql(lake, task)
            dataset = curate_sft(lake.read_arrow(task.table("sft_candidates")), curation_policy(lake, task)).table
            curated[mode] = sorted(json.dumps([r["messages"], r["reward"], r["target_source"], r["split"]])
                                   for r in dataset.to_pylist())
            redacted[mode] = [r for table in ("interactions", "feedback_events")
                              for r in lake.read_arrow(table).column("redactions").to_pylist() if r not in (None, "{}")]
    finally:
        if previous is not None:
            WRITER.configure(previous)
    assert len(curated["all"]) > 100
    assert redacted["all"] == []  # the redactor found nothing in the desk's texts
    assert curated["all"] == curated["none"]  # the same training rows, so the same learning curve


def test_the_scan_finds_a_canary_in_compressed_parquet_escaped_json_and_sqlite(tmp_path):
    """The whole-loop scan can fail: a canary in a zstd Parquet page, a PEM key JSON-escaped, an email in a
    SQLite page are each found; a placeholder is not a leak."""
    import sqlite3

    import pyarrow as pa

    from .pii_canaries import PEM_KEY

    pq.write_table(pa.table({"x": [f"card {CANARIES['CREDIT_CARD'][1]} here"]}), tmp_path / "a.parquet",
                   compression="zstd")
    (tmp_path / "b.jsonl").write_text(json.dumps({"config": PEM_KEY}))
    with sqlite3.connect(tmp_path / "c.db") as con:
        con.execute("create table t (x text)")
        con.execute("insert into t values (?)", (CANARIES["EMAIL_ADDRESS"][0],))
    con.close()
    (tmp_path / "clean.txt").write_text("mail <EMAIL>, card <CARD>")
    leaks, scanned = scan_home(tmp_path)
    assert sorted(leaks) == ["a.parquet", "b.jsonl", "c.db"] and scanned == {"parquet": 1, "other": 3, "weights": 0}
