"""Latency units end to end: a captured call that sleeps a known time reaches quality_daily in milliseconds."""

from __future__ import annotations

import time

import pytest

from continuum_pipeline import capture
from continuum_pipeline.lake.ingest import ingest_landing
from continuum_pipeline.sql_models.project import SqlProject
from continuum_pipeline.sql_models.runner import run_all

from .conftest import SQL_DIR

SLEEP_S = 0.05


def test_sleeping_call_shows_as_milliseconds_in_quality_daily(lake, settings, sdk):
    @capture(task="latency_probe", model="probe", consent="granted")
    def app(prompt: str) -> str:
        time.sleep(SLEEP_S)
        return "ok"

    @capture(task="latency_probe", model="simulated", consent="granted")
    def replayed(prompt: str) -> str:
        capture.annotate(latency_ms=1234.5)  # a simulation's model time replaces the measured microseconds
        return "ok"

    for i in range(3):
        app(f"q{i}")
    replayed("r")
    capture.flush()
    ingest_landing(lake, settings.landing_dir)
    run_all(lake, SqlProject.load(SQL_DIR))

    rows = {r["model"]: r for r in lake.read_arrow("quality_daily").to_pylist() if r["task"] == "latency_probe"}
    probe = rows["probe"]
    assert probe["interactions"] == 3
    # ≥ the sleep in ms (not s: 0.05, not µs: 50000); the upper bound allows a loaded machine
    assert SLEEP_S * 1000 <= probe["latency_p50_ms"] < SLEEP_S * 1000 + 250
    assert probe["latency_p50_ms"] <= probe["latency_p95_ms"] < SLEEP_S * 1000 + 250
    assert rows["simulated"]["latency_p50_ms"] == pytest.approx(1234.5)
    assert "p50_latency_ms" not in probe  # the unit is in the name, one name
