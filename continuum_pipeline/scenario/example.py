"""The support desk's plug-ins, named by import path in its task YAML (scenario/defs/support_desk/defs.yaml):
the knowledge-base check (a `python` judge), the base model's pre-training corpus, and the golden file.

Which scenario and which side of its policy change the knowledge base is on come from the environment
(`CONTINUUM_SCENARIO`, `CONTINUUM_SCENARIO_PHASE`): the example app's own settings, not Continuum's.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

from continuum_pipeline.scenario.simulate import SupportDesk
from continuum_pipeline.scenario.spec import check_phase, load_scenario

PACKAGED_TASK = Path(__file__).resolve().parent / "defs" / "support_desk" / "defs.yaml"


@lru_cache(maxsize=4)
def _desk(path: str | None) -> SupportDesk:
    return SupportDesk(load_scenario(path))


def desk() -> SupportDesk:
    return _desk(os.environ.get("CONTINUUM_SCENARIO") or None)


def phase() -> str:
    value = os.environ.get("CONTINUUM_SCENARIO_PHASE", "before")
    check_phase(value)
    return value


def kb_check(item) -> tuple[float, str]:
    """The knowledge base's verdict on one answer, for the phase in effect now. An interaction without the
    scenario's intent cannot be verified: that raises (the judge says why and retries), it never scores 0."""
    if not isinstance(item.metadata, dict) or "intent" not in item.metadata:
        raise ValueError(f"metadata has no scenario intent (keys: {sorted(item.metadata or {})}); "
                         "only the support desk's own traffic can be checked against its knowledge base")
    return desk().check(item.response, {**item.metadata, "phase": phase()})


def _kb_version() -> str:
    # The judge's version names the knowledge base's phase: a policy change relabels every interaction.
    return f"{desk().scenario.name}-{phase()}"


kb_check.version = _kb_version  # type: ignore[attr-defined]


def pretraining_corpus(n: int) -> dict[str, list]:
    """builtin:tiny's corpus: conversations for the intents the base model already knows, and every text the
    scenario can produce for the tokenizer's vocabulary."""
    d = desk()
    return {"conversations": d.pretraining_conversations(n), "texts": d.corpus_texts()}


def golden_rows(d: SupportDesk) -> list[dict]:
    """The golden file: held-out questions and slot values, sliced by intent and changed/unchanged intents.
    Phase-free: the KB check judges each answer by the knowledge base in effect when the gate runs."""
    rows = []
    for item in d.golden_set():
        if item.phase != "before":
            continue  # changed intents repeat their questions after the change; one copy suffices
        group = "changed_intents" if item.intent in d.changed_intents else "unchanged_intents"
        rows.append({"id": item.golden_id, "messages": item.messages, "reference": item.expected,
                     "metadata": {"intent": item.intent, "slots": item.slots, "intent_group": group}})
    return rows


def write_golden_file(path: Path, d: SupportDesk | None = None) -> Path:
    rows = golden_rows(d or desk())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
    return path


def write_task(folder: Path, scenario_path: str | None, triggers: dict | None = None) -> Path:
    """A copy of the packaged task instance with a golden file generated from the scenario (another scenario has
    other golden questions), and `triggers` settings replaced."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    write_golden_file(folder / "golden.jsonl", _desk(scenario_path))
    text = PACKAGED_TASK.read_text(encoding="utf-8")
    if triggers:
        data = yaml.safe_load(text)
        data["attributes"]["triggers"] = {**data["attributes"].get("triggers", {}), **triggers}
        text = yaml.safe_dump(data, sort_keys=False)
    (folder / "defs.yaml").write_text(text, encoding="utf-8")
    return folder / "defs.yaml"


if __name__ == "__main__":  # regenerate the packaged golden file: python -m continuum_pipeline.scenario.example
    print(write_golden_file(PACKAGED_TASK.parent / "golden.jsonl", _desk(None)))
