"""The commented defs.yaml that `dg scaffold defs continuum_pipeline.FlywheelComponent NAME` and
`continuum init TASK` write."""

from __future__ import annotations

from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "template.yaml"
COMPONENT_TYPE = "continuum_pipeline.FlywheelComponent"


def render_template(name: str, type_name: str = COMPONENT_TYPE) -> str:
    return TEMPLATE.read_text(encoding="utf-8").format(name=name, type_name=type_name,
                                                       dashed=name.replace("_", "-"))
