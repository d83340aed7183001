"""The training sensors on a real lake and Dagster instance: each fires and skips when it should."""

from __future__ import annotations

import dagster as dg

from continuum_pipeline.defs.resources import resources_from_settings
from continuum_pipeline.defs.triggers.sensors import (
    error_rate_sensor,
    quality_drop_sensor,
    sample_count_sensor,
)
from continuum_pipeline.judge.labeling import label_interactions
from continuum_pipeline.judge.verifier import ProgrammaticVerifier
from continuum_pipeline.lake.ingest import ingest_landing
from continuum_pipeline.sql_models.project import SqlProject
from continuum_pipeline.sql_models.runner import run_all

from .conftest import REPO_ROOT, feedback, interaction, write_segment


def fill(lake, settings, days: dict[int, float], per_day: int = 40, negative_share: float = 0.0):
    """Interactions on given days of November with a share of right answers, plus some negative feedback."""
    recs = []
    for d, right in days.items():
        for k in range(per_day):
            i = d * 1000 + k
            recs.append(interaction(i, ts=f"2026-11-{d:02d}T10:{k % 60:02d}:00Z",
                                    metadata='{"right": %s}' % ("true" if k < right * per_day else "false")))
            if k < negative_share * per_day:
                recs.append(feedback(i, f"i{i:06d}", score=0.0))
            elif k < per_day // 2:
                recs.append(feedback(i, f"i{i:06d}", score=1.0))
    write_segment(settings.landing_dir, "20261130T000000Z-t", recs)
    ingest_landing(lake, settings.landing_dir)
    label_interactions(lake, [ProgrammaticVerifier(lambda item: (1.0 if item.metadata["right"] else 0.0, ""),
                                                   name="kb")])
    run_all(lake, SqlProject.load(REPO_ROOT / "dbt_like_sql"))


def evaluate(sensor, settings, instance, cursor=None):
    r = resources_from_settings(settings)
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor,
                                  resources={"lake": r["lake"], "flywheel": r["flywheel"]})
    return sensor(ctx), ctx.cursor


def test_quality_drop_fires_once_and_respects_the_cooldown(lake, settings, monkeypatch):
    fill(lake, settings, {1: 0.9, 2: 0.9, 3: 0.9, 4: 0.4})
    with dg.instance_for_test() as instance:
        first, cursor = evaluate(quality_drop_sensor, settings, instance)
        assert isinstance(first, dg.RunRequest) and first.run_key == "quality_drop_sensor:quality-drop-2026-11-04"
        assert first.tags["continuum/trigger"] == "quality_drop_sensor" and "drop" in first.tags["continuum/reason"]
        again, _ = evaluate(quality_drop_sensor, settings, instance, cursor)
        assert isinstance(again, dg.SkipReason) and "already requested" in again.skip_message

        instance.report_runless_asset_event(dg.AssetMaterialization("candidate_model", metadata={"eligible_rows": 0}))
        cooling, _ = evaluate(quality_drop_sensor, settings, instance)
        assert isinstance(cooling, dg.SkipReason) and "cooling down" in cooling.skip_message
        monkeypatch.setenv("CONTINUUM_TRIGGER_COOLDOWN_HOURS", "0")
        from continuum_pipeline.settings import Settings

        fires, _ = evaluate(quality_drop_sensor, Settings.from_env(), instance)
        assert isinstance(fires, dg.RunRequest)


def test_quality_drop_and_error_rate_stay_quiet_on_a_steady_lake(lake, settings):
    fill(lake, settings, {1: 0.9, 2: 0.9, 3: 0.88})
    with dg.instance_for_test() as instance:
        quiet, _ = evaluate(quality_drop_sensor, settings, instance)
        assert isinstance(quiet, dg.SkipReason) and "drop" in quiet.skip_message
        calm, _ = evaluate(error_rate_sensor, settings, instance)
        assert isinstance(calm, dg.SkipReason) and "negative-feedback rate" in calm.skip_message


def test_error_rate_fires_on_negative_feedback(lake, settings):
    fill(lake, settings, {1: 0.9, 2: 0.9}, negative_share=0.45)
    with dg.instance_for_test() as instance:
        fired, _ = evaluate(error_rate_sensor, settings, instance)
        assert isinstance(fired, dg.RunRequest) and fired.run_key == "error_rate_sensor:error-rate-2026-11-02"


def test_sample_count_counts_new_eligible_interactions_since_the_last_training(lake, settings, monkeypatch):
    monkeypatch.setenv("CONTINUUM_TRIGGER_MIN_SAMPLES", "30")
    monkeypatch.setenv("CONTINUUM_TRIGGER_COOLDOWN_HOURS", "0")
    from continuum_pipeline.settings import Settings

    s = Settings.from_env()
    fill(lake, s, {1: 1.0}, per_day=40)  # 40 eligible (right answers, consent granted, ok)
    with dg.instance_for_test() as instance:
        fired, _ = evaluate(sample_count_sensor, s, instance)
        assert isinstance(fired, dg.RunRequest) and "40 new" in fired.tags["continuum/reason"]
        instance.report_runless_asset_event(dg.AssetMaterialization("candidate_model", metadata={"eligible_rows": 20}))
        skipped, _ = evaluate(sample_count_sensor, s, instance)
        assert isinstance(skipped, dg.SkipReason) and "20 new" in skipped.skip_message
