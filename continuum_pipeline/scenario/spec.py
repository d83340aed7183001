"""The scenario file: dataclasses, loading and validation.

Everything scenario-specific lives in the YAML, so another scenario file runs without code changes.
Validation fails early with a `ScenarioError` naming the field path and the fix, e.g.
`intents.refund_status.answer: missing — add the canonical answer ...`.
"""

from __future__ import annotations

import functools
import importlib.resources
import random
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from typing import Any

PHASES = ("before", "after")  # before / after the policy change
SPLITS = ("train", "golden")  # traffic / held-out evaluation
PACKAGED = "support_desk.yaml"


class ScenarioError(ValueError):
    """A scenario that cannot be used; `field` is the dotted path of the offending field."""

    def __init__(self, field: str, problem: str, fix: str, source: str = "") -> None:
        self.field, self.problem, self.fix, self.source = field, problem, fix, source
        super().__init__(f"{source + ': ' if source else ''}{field}: {problem} — {fix}")


@dataclass(frozen=True)
class SlotPool:
    train: tuple[str, ...]  # values for traffic
    golden: tuple[str, ...]  # held-out values for evaluation (disjoint from train)


@dataclass(frozen=True)
class Intent:
    name: str
    answer: str  # canonical answer template before the policy change
    questions: tuple[str, ...]  # traffic paraphrase templates
    golden_questions: tuple[str, ...]  # held-out paraphrase templates
    slots: dict[str, SlotPool]
    weight: float  # traffic share before the policy change
    in_base: bool  # the base model is pre-trained on this intent


@dataclass(frozen=True)
class TeacherSpec:
    error_rate: float
    price_per_1k_tokens: float
    stale_share: float = 0.5  # after the change: share of wrong answers that repeat the old policy


@dataclass(frozen=True)
class StudentSpec:
    price_per_1k_tokens: float


@dataclass(frozen=True)
class UserSpec:
    rating_prob: float
    rating_noise: float
    agent_edit_prob: float
    reopen_prob: float


@dataclass(frozen=True)
class PolicyChange:
    answers: dict[str, str]  # intent -> new canonical answer template
    weights: dict[str, float]  # intent -> traffic weight after the change (others keep theirs)


@dataclass(frozen=True)
class Scenario:
    name: str
    seed: int
    system_prompt: str
    intents: dict[str, Intent]
    teacher: TeacherSpec
    student: StudentSpec
    users: UserSpec
    policy_change: PolicyChange
    golden_per_slice: int = 8

    def answer(self, intent: str, phase: str) -> str:
        """The answer template of `intent` in `phase`."""
        check_phase(phase)
        if phase == "after" and intent in self.policy_change.answers:
            return self.policy_change.answers[intent]
        return self.intents[intent].answer

    def weights(self, phase: str) -> dict[str, float]:
        check_phase(phase)
        weights = {name: i.weight for name, i in self.intents.items()}
        if phase == "after":
            weights.update(self.policy_change.weights)
        return weights


def check_phase(phase: str) -> None:
    if phase not in PHASES:
        raise ValueError(f"phase={phase!r}: use one of {', '.join(PHASES)}")


@functools.lru_cache(maxsize=4096)
def template_slots(template: str) -> tuple[str, ...]:
    """Slot names in `template`, in order of first use; ValueError unless every field is a plain `{name}`."""
    names: dict[str, None] = {}
    for _, field, spec, conversion in Formatter().parse(template):
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            raise ValueError(f"slot {{{field}}} is not a plain {{name}}")
        names[field] = None
    return tuple(names)


def load_scenario(path: str | Path | None = None) -> Scenario:
    """Load and validate a scenario file; None loads the packaged support-desk scenario."""
    import yaml  # only the demo and training need PyYAML

    if path is None:
        source, text = PACKAGED, importlib.resources.files(__package__).joinpath(PACKAGED).read_text("utf-8")
    else:
        source, text = str(path), Path(path).read_text("utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError("<file>", f"not valid YAML ({exc})", "fix the YAML syntax", source) from None
    try:
        return parse_scenario(data)
    except ScenarioError as exc:
        raise ScenarioError(exc.field, exc.problem, exc.fix, source) from None


# --- validation --------------------------------------------------------------------------------------

_MISSING = object()
_TOP = {"name", "seed", "system_prompt", "golden_per_slice", "teacher", "student", "users", "intents",
        "policy_change"}
_INTENT = {"answer", "questions", "golden_questions", "slots", "weight", "in_base"}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _mapping(value: Any, path: str, allowed: set[str] | None = None) -> dict:
    if not isinstance(value, dict):
        raise ScenarioError(path or "<top level>", f"must be a mapping, got {type(value).__name__}",
                            "write `key: value` lines under it")
    for key in value:
        if allowed is not None and key not in allowed:
            raise ScenarioError(_join(path, str(key)), "unknown field",
                                f"use one of {', '.join(sorted(allowed))} (typo?)")
    return value


def _get(data: dict, key: str, path: str, fix: str, default: Any = _MISSING) -> tuple[Any, str]:
    where = _join(path, key)
    if data.get(key) is None:
        if default is _MISSING:
            raise ScenarioError(where, "missing", fix)
        return default, where
    return data[key], where


def _text(value: Any, where: str, fix: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ScenarioError(where, f"must be a non-empty string, got {value!r}", fix)
    return " ".join(value.split())


def _number(value: Any, where: str, low: float, high: float | None, fix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < low or (
            high is not None and value > high):
        bounds = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise ScenarioError(where, f"must be a number {bounds}, got {value!r}", fix)
    return float(value)


def _prob(data: dict, key: str, path: str, default: Any = _MISSING) -> float:
    value, where = _get(data, key, path, "add a probability, e.g. 0.1", default)
    return _number(value, where, 0.0, 1.0, "use a probability, e.g. 0.1")


def _price(data: dict, key: str, path: str) -> float:
    value, where = _get(data, key, path, "add the price in USD per 1,000 tokens, e.g. 0.01")
    return _number(value, where, 0.0, None, "use a price in USD per 1,000 tokens, e.g. 0.01")


def _templates(value: Any, where: str, slots: dict[str, SlotPool],
               needed: tuple[str, ...]) -> tuple[str, ...]:
    """A non-empty list of distinct templates using only declared slots, each containing `needed`."""
    if not isinstance(value, list) or not value:
        raise ScenarioError(where, "must be a non-empty list of question templates",
                            "list paraphrases, one per line starting with `- `")
    out: list[str] = []
    for i, item in enumerate(value):
        template = _template(item, f"{where}[{i}]", slots)
        missing = [s for s in needed if s not in template_slots(template)]
        if missing:
            raise ScenarioError(f"{where}[{i}]", f"lacks slot {{{missing[0]}}} that the answer copies",
                                f"mention {{{missing[0]}}} in the question")
        if template in out:
            raise ScenarioError(f"{where}[{i}]", f"duplicate of {template!r}", "remove or reword it")
        out.append(template)
    return tuple(out)


def _template(value: Any, where: str, slots: dict[str, SlotPool]) -> str:
    template = _text(value, where, "write the text, with slots as {name}")
    try:
        names = template_slots(template)
    except ValueError as exc:
        raise ScenarioError(where, f"bad template {template!r} ({exc})",
                            "write slots as {name} and literal braces as {{ }}") from None
    unknown = [n for n in names if n not in slots]
    if unknown:
        raise ScenarioError(where, f"uses undeclared slot {{{unknown[0]}}}",
                            f"declare it under slots.{unknown[0]} with train and golden values")
    return template


def _values(value: Any, where: str) -> tuple[str, ...]:
    fix = 'list quoted values, e.g. ["#48213", "#50917"]'
    if not isinstance(value, list) or not value:
        raise ScenarioError(where, "must be a non-empty list of values", fix)
    out: list[str] = []
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, str | int):  # ints: unquoted numbers like 12
            raise ScenarioError(f"{where}[{i}]", f"must be a string, got {item!r}", fix)
        text = _text(str(item), f"{where}[{i}]", fix)
        if text in out:
            raise ScenarioError(f"{where}[{i}]", f"duplicate value {text!r}", "remove it")
        out.append(text)
    return tuple(out)


def _generated(value: Any, where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Random numbers (no leading zero) for slots like order numbers, where real traffic rarely repeats a value:
    the golden values first, then train values that exclude them. Seeded by the spec, so a YAML anchor shared by
    several intents yields the same pool everywhere."""
    spec = _mapping(value, where, {"digits", "prefix", "train", "golden"})
    digits = int(_number(_get(spec, "digits", where, "add the number of digits, e.g. 5")[0],
                         f"{where}.digits", 1, 12, "use 1 to 12 digits"))
    prefix = spec.get("prefix") or ""
    if not isinstance(prefix, str):
        raise ScenarioError(f"{where}.prefix", f"must be a string, got {prefix!r}", 'quote it, e.g. "#"')
    sizes = {}
    for key, default in (("train", 500), ("golden", 8)):
        sizes[key] = int(_number(spec.get(key, default), f"{where}.{key}", 1, None, "use a positive count"))
    room = 9 * 10 ** (digits - 1)
    if sum(sizes.values()) > room:
        raise ScenarioError(where, f"{digits} digit(s) give only {room} numbers for {sum(sizes.values())} values",
                            "use more digits or fewer values")
    rng = random.Random(f"slot:{prefix}:{digits}:{sizes['train']}:{sizes['golden']}")
    values: dict[str, None] = {}
    while len(values) < sum(sizes.values()):
        values[prefix + str(rng.randrange(10 ** (digits - 1), 10 ** digits))] = None
    ordered = tuple(values)
    return ordered[sizes["golden"]:], ordered[:sizes["golden"]]


def _slots(value: Any, where: str) -> dict[str, SlotPool]:
    pools: dict[str, SlotPool] = {}
    for name, pool in _mapping(value, where).items():
        path = _join(where, str(name))
        if not str(name).isidentifier():
            raise ScenarioError(path, "slot names must be identifiers", "use letters, digits and _")
        pool = _mapping(pool, path, {"train", "golden", "generate"})
        if "generate" in pool:
            if set(pool) != {"generate"}:
                raise ScenarioError(path, "has both `generate` and value lists", "keep one of them")
            train, golden = _generated(pool["generate"], f"{path}.generate")
        else:
            fix = "add a list of values (or `generate: {digits: 5, prefix: \"#\"}`)"
            train = _values(_get(pool, "train", path, fix)[0], f"{path}.train")
            golden = _values(_get(pool, "golden", path, fix)[0], f"{path}.golden")
        shared = sorted(set(train) & set(golden))
        if shared:
            raise ScenarioError(f"{path}.golden", f"{shared[0]!r} is also a train value",
                                "held-out values must be unseen: use a different value")
        pools[name] = SlotPool(train, golden)
    return pools


def _intent(name: str, data: Any, path: str) -> Intent:
    data = _mapping(data, path, _INTENT)
    slots = _slots(_get(data, "slots", path, "", {})[0], f"{path}.slots")
    answer, where = _get(data, "answer", path, "add the canonical answer (one short sentence, 8-20 words)")
    answer = _template(answer, where, slots)
    needed = template_slots(answer)
    fix = "add a list of paraphrase templates"
    questions = _templates(_get(data, "questions", path, fix)[0], f"{path}.questions", slots, needed)
    golden = _templates(_get(data, "golden_questions", path, fix)[0], f"{path}.golden_questions", slots,
                        needed)
    overlap = sorted(set(questions) & set(golden))
    if overlap:
        raise ScenarioError(f"{path}.golden_questions", f"{overlap[0]!r} is also a traffic question",
                            "golden questions must be held out: reword it")
    used = {s for t in questions + golden for s in template_slots(t)}
    unused = [s for s in slots if s not in used]
    if unused:
        raise ScenarioError(f"{path}.slots.{unused[0]}", "not used by any question", "use it or remove it")
    weight, where = _get(data, "weight", path, "add the traffic share, e.g. 1.0")
    in_base, where_base = _get(data, "in_base", path, "add `in_base: true` or `in_base: false`")
    if not isinstance(in_base, bool):
        raise ScenarioError(where_base, f"must be true or false, got {in_base!r}", "write true or false")
    return Intent(name, answer, questions, golden, slots,
                  _number(weight, where, 0.0, None, "use a non-negative traffic share, e.g. 1.0"), in_base)


def _policy_change(data: Any, intents: dict[str, Intent]) -> PolicyChange:
    data = _mapping(data, "policy_change", {"answers", "weights"})
    answers: dict[str, str] = {}
    raw, path = _get(data, "answers", "policy_change",
                     "add `answers:` with the new answer per changed intent")
    for name, text in _mapping(raw, path).items():
        where = _join(path, str(name))
        if name not in intents:
            raise ScenarioError(where, "unknown intent", f"use one of {', '.join(intents)}")
        intent = intents[name]
        answer = _template(text, where, intent.slots)
        for template in intent.questions + intent.golden_questions:
            missing = [s for s in template_slots(answer) if s not in template_slots(template)]
            if missing:
                raise ScenarioError(where, f"copies slot {{{missing[0]}}} that {template!r} lacks",
                                    f"drop {{{missing[0]}}} or add it to every question of {name}")
        if answer == intent.answer:
            raise ScenarioError(where, "same as the answer before the change", "change the answer or drop it")
        answers[name] = answer
    weights: dict[str, float] = {}
    raw, path = _get(data, "weights", "policy_change", "", {})
    for name, value in _mapping(raw, path).items():
        where = _join(path, str(name))
        if name not in intents:
            raise ScenarioError(where, "unknown intent", f"use one of {', '.join(intents)}")
        weights[name] = _number(value, where, 0.0, None, "use a non-negative traffic share, e.g. 2.0")
    return PolicyChange(answers, weights)


def parse_scenario(data: Any) -> Scenario:
    """Validate parsed YAML (a dict) into a Scenario; raises ScenarioError naming the bad field."""
    data = _mapping(data, "", _TOP)
    name = _text(_get(data, "name", "", "add `name: <scenario name>`")[0], "name", "use a short name")
    seed, where = _get(data, "seed", "", "add `seed: <integer>` for reproducible runs")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ScenarioError(where, f"must be an integer, got {seed!r}", "use e.g. `seed: 42`")
    system_prompt = _text(_get(data, "system_prompt", "", "add a one-line system prompt")[0], "system_prompt",
                          "write a one-line system prompt")
    per_slice, where = _get(data, "golden_per_slice", "", "", 8)
    if isinstance(per_slice, bool) or not isinstance(per_slice, int) or per_slice < 1:
        raise ScenarioError(where, f"must be a positive integer, got {per_slice!r}", "use e.g. 8")

    raw, path = _get(data, "intents", "", "add `intents:` with one entry per intent")
    intents = {str(k): _intent(str(k), v, _join(path, str(k))) for k, v in _mapping(raw, path).items()}
    if len(intents) < 2:
        raise ScenarioError(path, f"has {len(intents)} intent(s)",
                            "add at least 2 (wrong teacher answers borrow another intent's answer)")
    teacher = _mapping(_get(data, "teacher", "", "add `teacher:` with error_rate and price_per_1k_tokens")[0],
                       "teacher", {"error_rate", "stale_share", "price_per_1k_tokens"})
    student = _mapping(_get(data, "student", "", "add `student:` with price_per_1k_tokens")[0], "student",
                       {"price_per_1k_tokens"})
    users = _mapping(_get(data, "users", "", "add `users:` with the feedback probabilities")[0], "users",
                     {"rating_prob", "rating_noise", "agent_edit_prob", "reopen_prob"})
    raw = _get(data, "policy_change", "", "add `policy_change:` with answers and weights")[0]
    policy = _policy_change(raw, intents)
    scenario = Scenario(
        name=name, seed=seed, system_prompt=system_prompt, intents=intents,
        teacher=TeacherSpec(_prob(teacher, "error_rate", "teacher"),
                            _price(teacher, "price_per_1k_tokens", "teacher"),
                            _prob(teacher, "stale_share", "teacher", 0.5)),
        student=StudentSpec(_price(student, "price_per_1k_tokens", "student")),
        users=UserSpec(*(_prob(users, k, "users") for k in ("rating_prob", "rating_noise", "agent_edit_prob",
                                                            "reopen_prob"))),
        policy_change=policy, golden_per_slice=per_slice,
    )
    for phase in PHASES:
        seen: dict[str, str] = {}  # the verifier tells intents apart by their answers
        for intent in intents:
            answer = scenario.answer(intent, phase).lower()
            if answer in seen:
                where = (f"policy_change.answers.{intent}" if intent in policy.answers
                         else f"intents.{intent}.answer")
                raise ScenarioError(where, f"same answer as {seen[answer]} ({phase} the policy change)",
                                    "each intent needs its own answer (or merge the intents)")
            seen[answer] = intent
        if sum(scenario.weights(phase).values()) <= 0:
            raise ScenarioError("intents" if phase == "before" else "policy_change.weights",
                                f"all traffic weights are 0 {phase} the policy change",
                                "give at least one intent a positive weight")
    return scenario
