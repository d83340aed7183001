"""The commented defs.yaml that `dg scaffold defs continuum_pipeline.FlywheelComponent NAME` and
`continuum init TASK` write."""

from __future__ import annotations

import json
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "template.yaml"
COMPONENT_TYPE = "continuum_pipeline.FlywheelComponent"


def render_template(name: str, type_name: str = COMPONENT_TYPE, captured_task: str | None = None) -> str:
    text = TEMPLATE.read_text(encoding="utf-8").format(name=name, type_name=type_name, dashed=name.replace("_", "-"))
    if captured_task and captured_task != name:  # the captured name is no valid task name: select it explicitly
        text = text.replace("  # select:", "  select:  ", 1).replace(f"  #   task: {name}", f"    task: {json.dumps(captured_task)}", 1)
    return text
