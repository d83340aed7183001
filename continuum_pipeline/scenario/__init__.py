"""The support-desk scenario: a tiny model learns support answers from a teacher, then a policy change.

`load_scenario()` reads the packaged `support_desk.yaml` (or another file: nothing scenario-specific
is in the code); `SupportDesk` simulates traffic, the KB verifier, the teacher and the users.
"""

from continuum_pipeline.scenario.simulate import (
    GoldenItem,
    Request,
    SupportDesk,
    TrafficStats,
    normalize_answer,
    simulate_traffic,
)
from continuum_pipeline.scenario.spec import (
    PHASES,
    SPLITS,
    Intent,
    PolicyChange,
    Scenario,
    ScenarioError,
    SlotPool,
    StudentSpec,
    TeacherSpec,
    UserSpec,
    load_scenario,
    parse_scenario,
    template_slots,
)

__all__ = [
    "PHASES", "SPLITS", "GoldenItem", "Intent", "PolicyChange", "Request", "Scenario", "ScenarioError",
    "SlotPool", "StudentSpec", "SupportDesk", "TeacherSpec", "TrafficStats", "UserSpec", "load_scenario",
    "normalize_answer", "parse_scenario", "simulate_traffic", "template_slots",
]
