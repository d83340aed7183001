"""Orchestration: thin Dagster assets, checks, sensors and schedules over the domain code."""
