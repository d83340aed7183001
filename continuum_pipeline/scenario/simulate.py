"""The support desk as a simulation: traffic, the KB verifier, a noisy teacher, users who give feedback.

All randomness comes from explicit `random.Random` instances, so a seed reproduces a run exactly.
All traffic goes through the real capture SDK, so the pipeline sees it like production traffic.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import product
from string import Formatter
from typing import Any

from continuum_pipeline.judge.verifier import normalize_answer
from continuum_pipeline.scenario.spec import (
    SPLITS,
    Intent,
    Scenario,
    ScenarioError,
    check_phase,
    template_slots,
)

Serve = Callable[[list[list[dict]]], list[str]]
CORPUS_VALUES = 64  # slot values per template in the tokenizer corpus: enough; generated pools hold hundreds


@dataclass(frozen=True)
class Request:
    intent: str
    slots: dict[str, str]
    question: str
    phase: str  # "before" | "after" the policy change
    messages: list[dict]  # [system, user]
    metadata: dict  # {"intent", "slots", "phase"}: JSON-serializable, travels with the captured interaction


@dataclass(frozen=True)
class GoldenItem:
    golden_id: str
    slice: str  # the intent, or "changed:<intent>" for post-change items of changed intents
    intent: str
    slots: dict[str, str]
    messages: list[dict]
    expected: str
    phase: str


@dataclass
class TrafficStats:
    requests: int = 0
    correct: int = 0
    feedback_events: int = 0
    cost_usd: float = 0.0
    by_intent: dict[str, dict[str, int]] = field(default_factory=dict)  # intent -> {"requests", "correct"}

    @property
    def accuracy(self) -> float:
        return self.correct / self.requests if self.requests else 0.0


def _template_regex(template: str) -> re.Pattern[str]:
    """Matches questions rendered from `template` (any case and spacing), capturing the slot values."""
    parts: list[str] = []
    seen: set[str] = set()
    for literal, name, _, _ in Formatter().parse(template):
        parts.append(r"\s+".join(re.escape(word) for word in re.split(r"\s+", literal)))
        if name:
            parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>.+?)")
            seen.add(name)
    return re.compile(r"\s*" + "".join(parts) + r"\s*", re.IGNORECASE)


class SupportDesk:
    """One scenario, simulated. `seed` (default: the scenario's) drives sample_request's own stream and
    pretraining_conversations; the golden set depends on the scenario only."""

    def __init__(self, scenario: Scenario, seed: int | None = None, traffic_skew: float = 0.0) -> None:
        self.scenario = scenario
        self.seed = scenario.seed if seed is None else seed
        # Zipf-like skew (bench/curation.py): the k-th intent in the scenario's order gets weight × 1/k^skew,
        # so a few intents dominate traffic as the head of real support traffic does. 0: the scenario's weights.
        self.traffic_skew = traffic_skew
        self.rng = random.Random(self.seed)
        self.changed_intents = frozenset(scenario.policy_change.answers)
        self._patterns = [(intent.name, _template_regex(t)) for intent in scenario.intents.values()
                          for t in intent.questions + intent.golden_questions]
        self._check_questions_parse()

    # --- requests ------------------------------------------------------------------------------------
    def make_request(self, intent: str, slots: dict[str, str], question: str, phase: str) -> Request:
        check_phase(phase)
        messages = [{"role": "system", "content": self.scenario.system_prompt},
                    {"role": "user", "content": question}]
        metadata = {"intent": intent, "slots": dict(slots), "phase": phase}
        return Request(intent, dict(slots), question, phase, messages, metadata)

    def sample_request(self, phase: str = "before", split: str = "train",
                       rng: random.Random | None = None) -> Request:
        """A question drawn by the phase's traffic weights, from the split's templates and slot values.
        `rng` defaults to the desk's own stream."""
        rng = rng or self.rng
        weights = self.traffic_weights(phase)
        name = rng.choices(list(weights), weights=list(weights.values()))[0]
        question, slots = self._draw(self.scenario.intents[name], split, rng)
        return self.make_request(name, slots, question, phase)

    def traffic_weights(self, phase: str = "before") -> dict[str, float]:
        weights = self.scenario.weights(phase)
        if not self.traffic_skew:
            return weights
        return {name: w / (rank ** self.traffic_skew) for rank, (name, w) in enumerate(weights.items(), 1)}

    def _draw(self, intent: Intent, split: str, rng: random.Random) -> tuple[str, dict[str, str]]:
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: use one of {', '.join(SPLITS)}")
        template = rng.choice(intent.questions if split == "train" else intent.golden_questions)
        slots = {s: rng.choice(getattr(intent.slots[s], split)) for s in template_slots(template)}
        return template.format(**slots), slots

    def parse_question(self, question: str) -> tuple[str, dict[str, str]]:
        """(intent, slots) of a question rendered from one of the scenario's templates; ValueError if none
        or several (intent, slots) readings match."""
        readings: dict[str, tuple[str, dict[str, str]]] = {}
        for intent, pattern in self._patterns:
            match = pattern.fullmatch(question)
            if match:
                slots = {k: v.strip() for k, v in match.groupdict().items()}
                readings[json.dumps([intent, slots], sort_keys=True)] = (intent, slots)
        if len(readings) != 1:
            found = "no template" if not readings else f"{len(readings)} readings {sorted(readings)}"
            raise ValueError(f"question {question!r} matches {found} of scenario {self.scenario.name!r}")
        return next(iter(readings.values()))

    def _check_questions_parse(self) -> None:
        """Every template, rendered, must read back as its own intent and slots (else the teacher
        would answer the wrong intent)."""
        for intent in self.scenario.intents.values():
            for key in ("questions", "golden_questions"):
                for i, template in enumerate(getattr(intent, key)):
                    for split in SPLITS:
                        slots = {s: getattr(intent.slots[s], split)[0] for s in template_slots(template)}
                        question = template.format(**slots)
                        try:
                            parsed = self.parse_question(question)
                        except ValueError as exc:
                            parsed = (str(exc), {})
                        if parsed != (intent.name, slots):
                            raise ScenarioError(f"intents.{intent.name}.{key}[{i}]",
                                                f"{question!r} is ambiguous: {parsed[0]}",
                                                "reword it so no other template matches it")

    # --- the KB verifier -----------------------------------------------------------------------------
    def expected_answer(self, intent: str, slots: dict[str, str], phase: str) -> str:
        return self.scenario.answer(intent, phase).format(**slots)

    def check(self, response: str | None, metadata: dict | str | None) -> tuple[float, str]:
        """(1.0, why) if `response` is the expected answer for the metadata's (intent, slots, phase),
        else (0.0, what was expected). Never raises: unusable metadata scores 0.0 and says so.
        `metadata` may also be the JSON text stored with a captured interaction."""
        try:
            if isinstance(metadata, str):
                metadata = json.loads(metadata)
            intent, slots, phase = metadata["intent"], metadata.get("slots") or {}, metadata["phase"]
            expected = self.expected_answer(intent, slots, phase)
        except Exception as exc:  # garbled metadata is data to score, not a crash
            return 0.0, f"cannot verify: metadata {metadata!r} lacks a known intent/slots/phase ({exc!r})"
        if not isinstance(response, str) or not response.strip():
            return 0.0, f"no answer; expected {expected!r} for {intent} ({phase})"
        got = normalize_answer(response)
        if got == normalize_answer(expected):
            return 1.0, f"matches the {phase} answer for {intent}"
        if phase == "after" and intent in self.changed_intents and got == normalize_answer(
                self.expected_answer(intent, slots, "before")):
            return 0.0, f"stale: the answer before the policy change; expected {expected!r}"
        return 0.0, f"expected {expected!r} for {intent} ({phase})"

    # --- the teacher ---------------------------------------------------------------------------------
    def teacher_answer(self, request: Request, rng: random.Random) -> str:
        """Correct with probability 1 - error_rate; otherwise a plausible wrong answer: after the policy
        change (for changed intents) often the stale old answer, else another intent's answer."""
        teacher = self.scenario.teacher
        if rng.random() >= teacher.error_rate:
            return self.expected_answer(request.intent, request.slots, request.phase)
        changed = request.phase == "after" and request.intent in self.changed_intents
        if changed and rng.random() < teacher.stale_share:
            return self.expected_answer(request.intent, request.slots, "before")
        other = self.scenario.intents[rng.choice([n for n in self.scenario.intents if n != request.intent])]
        template = self.scenario.answer(other.name, request.phase)
        # Reuse the question's slot values where the names match, as a confused model would.
        slots = {s: request.slots.get(s) or rng.choice(other.slots[s].train)
                 for s in template_slots(template)}
        return template.format(**slots)

    def teacher_serve(self, phase: str, seed: int) -> Serve:
        """The teacher as a batch `serve` function for simulate_traffic. It sees messages only, so it reads
        the intent and slots back from the question text by matching the scenario's templates (stateless,
        and it works for any question the scenario can produce, golden ones included)."""
        check_phase(phase)
        rng = random.Random(seed)

        def serve(batch: list[list[dict]]) -> list[str]:
            answers = []
            for messages in batch:
                question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
                intent, slots = self.parse_question(question)
                answers.append(self.teacher_answer(self.make_request(intent, slots, question, phase), rng))
            return answers

        return serve

    # --- users ---------------------------------------------------------------------------------------
    def user_feedback(self, request: Request, response: str, rng: random.Random) -> list[dict[str, Any]]:
        """Keyword arguments for feedback.record (without the interaction id), one dict per event."""
        users = self.scenario.users
        correct = self.check(response, request.metadata)[0] == 1.0
        events: list[dict[str, Any]] = []
        if rng.random() < users.rating_prob:
            good = correct != (rng.random() < users.rating_noise)
            events.append({"score": 1.0 if good else 0.0, "label": "thumbs_up" if good else "thumbs_down"})
        if not correct:
            if rng.random() < users.agent_edit_prob:
                expected = self.expected_answer(request.intent, request.slots, request.phase)
                events.append({"correction": expected, "label": "agent_edit"})
            if rng.random() < users.reopen_prob:
                events.append({"outcome": "ticket_reopened"})
        return events

    # --- evaluation and training data ----------------------------------------------------------------
    def golden_set(self) -> list[GoldenItem]:
        """Held-out templates x held-out slot values, up to golden_per_slice per slice, drawn with a
        per-intent seed derived from the scenario's seed (so the set does not depend on the desk's seed).
        Changed intents get a second slice, "changed:<intent>", of the same questions after the change."""
        items: list[GoldenItem] = []
        for intent in self.scenario.intents.values():
            cases = [(t, dict(zip(template_slots(t), values, strict=True))) for t in intent.golden_questions
                     for values in product(*(intent.slots[s].golden for s in template_slots(t)))]
            rng = random.Random(f"{self.scenario.seed}:golden:{intent.name}")
            picked = sorted(rng.sample(range(len(cases)), min(self.scenario.golden_per_slice, len(cases))))
            slices = [("before", intent.name)]
            if intent.name in self.changed_intents:
                slices.append(("after", f"changed:{intent.name}"))
            for phase, slice_name in slices:
                for n, i in enumerate(picked):
                    template, slots = cases[i]
                    request = self.make_request(intent.name, slots, template.format(**slots), phase)
                    expected = self.expected_answer(intent.name, slots, phase)
                    items.append(GoldenItem(f"{slice_name}/{n:02d}", slice_name, intent.name, request.slots,
                                            request.messages, expected, phase))
        return items

    def pretraining_conversations(self, n: int) -> list[list[dict]]:
        """(system, user, assistant) conversations for the base model: in_base intents only, drawn
        uniformly, train templates and values, answers before the policy change."""
        rng = random.Random(f"{self.seed}:pretrain")
        base = [i for i in self.scenario.intents.values() if i.in_base]
        conversations = []
        for _ in range(n):
            intent = rng.choice(base)
            question, slots = self._draw(intent, "train", rng)
            request = self.make_request(intent.name, slots, question, "before")
            answer = self.expected_answer(intent.name, slots, "before")
            conversations.append([*request.messages, {"role": "assistant", "content": answer}])
        return conversations

    def corpus_texts(self) -> list[str]:
        """Every text the scenario can produce, to train a tokenizer on: the system prompt, every template
        (questions and answers, before and after the change) rendered so that each slot value appears
        with each template, and the slot values themselves."""
        texts = [self.scenario.system_prompt]
        for intent in self.scenario.intents.values():
            answers = {self.scenario.answer(intent.name, phase) for phase in ("before", "after")}
            for template in [*intent.questions, *intent.golden_questions, *sorted(answers)]:
                pools = {s: intent.slots[s].golden + intent.slots[s].train for s in template_slots(template)}
                for k in range(min(CORPUS_VALUES, max((len(p) for p in pools.values()), default=1))):
                    texts.append(template.format(**{s: p[k % len(p)] for s, p in pools.items()}))
            texts.extend(v for pool in intent.slots.values() for v in pool.train[:CORPUS_VALUES] + pool.golden)
        return list(dict.fromkeys(texts))

    # --- cost ----------------------------------------------------------------------------------------
    @staticmethod
    def estimated_tokens(text: str) -> int:
        """A tokenizer-free estimate: words x 1.3."""
        return round(len(text.split()) * 1.3)

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, who: str) -> float:
        prices = {"teacher": self.scenario.teacher.price_per_1k_tokens,
                  "student": self.scenario.student.price_per_1k_tokens}
        if who not in prices:
            raise ValueError(f"who={who!r}: use teacher or student")
        return (prompt_tokens + completion_tokens) / 1000 * prices[who]


def simulate_traffic(desk: SupportDesk, n: int, phase: str, serve: Serve, *, model: str,
                     model_version: str | None, who: str, seed: int, batch_size: int = 16,
                     start: datetime | None = None) -> TrafficStats:
    """Send `n` train-split requests through `serve` and the capture SDK, with user feedback.

    `serve` answers a batch of conversations at once (a student generates batched); each request is then
    captured one by one through an `@capture`d app that returns its precomputed answer; each is recorded
    with its batch's `serve` wall time as `latency_ms` (its user waited for the whole batch), not the app's
    microseconds of overhead. Requests and user behaviour use separate streams
    seeded from `seed`, so the same seed sends the same questions whatever the model answers.
    `start` puts the traffic on a simulated day (spread over 8 hours from `start`) instead of now.
    """
    from continuum_pipeline import capture, feedback

    check_phase(phase)
    desk.cost_usd(0, 0, who)  # fail fast on a bad `who`
    traffic, users = random.Random(f"traffic:{seed}"), random.Random(f"users:{seed}")
    stats = TrafficStats()
    answers: deque[str] = deque()
    batch_ms = [0.0]

    @capture(task="support_answer", model=model, model_version=model_version, consent="granted")
    def app(messages: list[dict], metadata: dict, ts: datetime | None) -> str:
        response = answers.popleft()
        prompt_tokens = sum(desk.estimated_tokens(m["content"]) for m in messages)
        completion_tokens = desk.estimated_tokens(response or "")
        cost = desk.cost_usd(prompt_tokens, completion_tokens, who)
        capture.annotate(metadata=metadata, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                         cost_usd=cost, latency_ms=batch_ms[0], **({"ts": ts} if ts else {}))
        stats.cost_usd += cost
        return response

    for batch_start in range(0, n, batch_size):
        batch = [desk.sample_request(phase, "train", traffic) for _ in range(min(batch_size, n - batch_start))]
        started = time.perf_counter()
        served = serve([r.messages for r in batch])
        batch_ms[0] = (time.perf_counter() - started) * 1000
        if len(served) != len(batch):
            raise ValueError(f"serve returned {len(served)} answers for {len(batch)} conversations")
        answers.extend(served)
        for offset, request in enumerate(batch):
            ts = start + timedelta(hours=8) * ((batch_start + offset) / n) if start else None
            response = app(request.messages, request.metadata, ts)
            iid = capture.last_interaction_id()
            for event in desk.user_feedback(request, response, users):
                feedback.record(iid, **event)
                stats.feedback_events += 1
            correct = desk.check(response, request.metadata)[0] == 1.0
            per_intent = stats.by_intent.setdefault(request.intent, {"requests": 0, "correct": 0})
            per_intent["requests"] += 1
            per_intent["correct"] += correct
            stats.requests += 1
            stats.correct += correct
    return stats
