"""The support-desk scenario: the file's shape and validation, the verifier, teacher, users and traffic."""

from __future__ import annotations

import copy
import importlib.resources
import json
import random
from collections import Counter

import pytest
import yaml

from continuum_pipeline import capture
from continuum_pipeline.capture.landing import list_segments
from continuum_pipeline.scenario import (
    ScenarioError,
    SupportDesk,
    load_scenario,
    simulate_traffic,
    template_slots,
)


@pytest.fixture(scope="module")
def desk() -> SupportDesk:
    return SupportDesk(load_scenario())


@pytest.fixture(scope="module")
def raw() -> dict:
    text = importlib.resources.files("continuum_pipeline.scenario").joinpath("support_desk.yaml").read_text()
    return yaml.safe_load(text)


def test_packaged_scenario_has_the_promised_shape(desk):
    s = desk.scenario
    assert s.name and s.system_prompt and isinstance(s.seed, int)
    assert len(s.intents) >= 12
    for intent in s.intents.values():
        assert len(intent.questions) >= 4 and len(intent.golden_questions) >= 2
        for phase in ("before", "after"):
            slots = {k: p.train[0] for k, p in intent.slots.items()}
            answer = desk.expected_answer(intent.name, slots, phase)
            assert 8 <= len(answer.split()) <= 20, answer  # a tiny student must be able to learn it
            assert len(template_slots(s.answer(intent.name, phase))) <= 2
    assert 1 / 3 <= sum(i.in_base for i in s.intents.values()) / len(s.intents) <= 2 / 3
    assert 3 <= len(desk.changed_intents) <= 4
    share = {phase: sum(s.weights(phase)[i] for i in desk.changed_intents) / sum(s.weights(phase).values())
             for phase in ("before", "after")}
    assert share["after"] > 1.5 * share["before"]  # traffic shifts toward the changed intents
    assert 0 < s.teacher.error_rate < 0.5 and s.student.price_per_1k_tokens < s.teacher.price_per_1k_tokens


def test_train_and_golden_pools_are_disjoint(desk):
    for intent in desk.scenario.intents.values():
        assert not set(intent.questions) & set(intent.golden_questions)
        for pool in intent.slots.values():
            assert not set(pool.train) & set(pool.golden)
    orders = desk.scenario.intents["refund_status"].slots["order"]
    assert all(any(c.isdigit() for c in v) for v in orders.golden)  # copying unseen digits is tested


def test_generated_slot_values_are_reproducible_and_held_out(desk):
    orders = desk.scenario.intents["refund_status"].slots["order"]
    assert (len(orders.train), len(orders.golden)) == (500, 8)
    assert all(v.startswith("#") and len(v) == 6 and v[1] != "0" and v[1:].isdigit() for v in orders.train)
    assert len(set(orders.train)) == 500 and not set(orders.train) & set(orders.golden)
    # A YAML anchor shares the pool; a reload draws the same values.
    assert desk.scenario.intents["track_order"].slots["order"] == orders
    assert load_scenario().intents["refund_status"].slots["order"] == orders


def _mutate(raw: dict, edit) -> dict:
    data = copy.deepcopy(raw)
    edit(data)
    return data


def _set(path: list[str], value):
    def edit(data):
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value
    return edit


@pytest.mark.parametrize("edit, field, words", [
    (lambda d: d["intents"]["refund_status"].pop("answer"), "intents.refund_status.answer", "missing"),
    (_set(["intents", "reschedule_delivery", "slots", "date", "golden"], ["March 9"]),
     "intents.reschedule_delivery.slots.date.golden", "also a train value"),
    (_set(["intents", "change_seats", "slots", "seats", "generate", "train"], 100),
     "intents.change_seats.slots.seats.generate", "give only 90 numbers"),
    (_set(["intents", "change_seats", "slots", "seats", "train"], ["7"]),
     "intents.change_seats.slots.seats", "both `generate` and value lists"),
    (_set(["intents", "billing_date", "wieght"], 1.0), "intents.billing_date.wieght", "unknown field"),
    (_set(["teacher", "error_rate"], 1.5), "teacher.error_rate", "between 0 and 1"),
    (_set(["intents", "track_order", "questions"], ["Where is my package?"]),
     "intents.track_order.questions[0]", "lacks slot {order}"),
    (_set(["intents", "cancel_order", "golden_questions"], ["Please cancel order {order}"]),
     "intents.cancel_order.golden_questions", "also a traffic question"),
    (_set(["policy_change", "answers", "no_such_intent"], "Hi."), "policy_change.answers.no_such_intent",
     "unknown intent"),
    (_set(["intents", "update_card", "in_base"], "yes"), "intents.update_card.in_base", "true or false"),
])
def test_validation_errors_name_the_field_and_the_fix(raw, tmp_path, edit, field, words):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_mutate(raw, edit)))
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert err.value.field == field and words in str(err.value)
    assert str(err.value).startswith(f"{path}: {field}: ") and err.value.fix


def test_ambiguous_templates_are_refused(raw):
    from continuum_pipeline.scenario import parse_scenario

    data = _mutate(raw, lambda d: d["intents"]["return_policy"]["questions"].append("How much is shipping?"))
    with pytest.raises(ScenarioError, match=r"intents\.(return_policy|shipping_cost)\.questions\[\d+\]"):
        SupportDesk(parse_scenario(data))


def test_another_scenario_runs_without_code_changes(tmp_path):
    orders = {"train": ["#111", "#222", "#333"], "golden": ["#999"]}
    data = {
        "name": "mini", "seed": 1, "system_prompt": "Be brief.",
        "intents": {
            "hello": {"answer": "Hello there.", "questions": ["Hi", "Hey"], "golden_questions": ["Hello"],
                      "weight": 1, "in_base": True},
            "where": {"answer": "Order {order} is on its way.", "questions": ["Where is {order}?"],
                      "golden_questions": ["Status of {order}?"], "slots": {"order": orders}, "weight": 2,
                      "in_base": False},
        },
        "teacher": {"error_rate": 0.1, "price_per_1k_tokens": 0.01},
        "student": {"price_per_1k_tokens": 0.001},
        "users": {"rating_prob": 0.5, "rating_noise": 0, "agent_edit_prob": 1, "reopen_prob": 0},
        "policy_change": {"answers": {"hello": "Hi, welcome back."}},
    }
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(data))
    mini = SupportDesk(load_scenario(path))
    golden = mini.golden_set()
    assert {g.slice for g in golden} == {"hello", "where", "changed:hello"}
    assert [g.expected for g in golden if g.slice == "where"] == ["Order #999 is on its way."]
    request = mini.sample_request("after", "train")
    answer = mini.expected_answer(request.intent, request.slots, "after")
    assert mini.check(answer, request.metadata)[0] == 1.0


def test_golden_set_is_deterministic_held_out_and_has_changed_slices(desk):
    golden = desk.golden_set()
    assert golden == SupportDesk(desk.scenario, seed=123).golden_set()  # independent of the traffic seed
    assert len({g.golden_id for g in golden}) == len(golden)
    sizes = Counter(g.slice for g in golden)
    assert {f"changed:{i}" for i in desk.changed_intents} <= set(sizes)
    assert all(6 <= n <= 10 for n in sizes.values()), sizes
    for g in golden:
        assert g.phase == ("after" if g.slice.startswith("changed:") else "before")
        assert g.messages[0]["role"] == "system" and g.messages[-1]["role"] == "user"
        assert desk.check(g.expected, {"intent": g.intent, "slots": g.slots, "phase": g.phase})[0] == 1.0
    rng = random.Random(0)
    traffic = {desk.sample_request(phase, "train", rng).question
               for phase in ("before", "after") for _ in range(1500)}
    assert not traffic & {g.messages[-1]["content"] for g in golden}


def test_check_normalizes_and_tells_phases_apart(desk):
    meta = {"intent": "refund_status", "slots": {"order": "#44763"}, "phase": "after"}
    expected = desk.expected_answer("refund_status", {"order": "#44763"}, "after")
    assert expected != desk.expected_answer("refund_status", {"order": "#44763"}, "before")
    assert desk.check(expected, meta) == (1.0, "matches the after answer for refund_status")
    assert desk.check("  " + expected.upper().rstrip(".").replace(" ", "   ") + " !", meta)[0] == 1.0
    assert desk.check(expected.replace("#44763", "# 4 4 7 6 3").replace(".", " ."), meta)[0] == 1.0
    assert desk.check(expected.replace("#44763", "#44764"), meta)[0] == 0.0
    score, why = desk.check(desk.expected_answer("refund_status", {"order": "#44763"}, "before"), meta)
    assert score == 0.0 and why.startswith("stale") and expected in why
    assert desk.check(expected, json.dumps(meta))[0] == 1.0  # as stored with a captured interaction
    assert desk.check(None, meta)[0] == 0.0
    for garbled in (None, {}, "not json", {"intent": "nope", "phase": "before"}, {"intent": "refund_status",
                    "phase": "before"}, {"intent": "refund_status", "slots": [1], "phase": "before"},
                    {**meta, "phase": "later"}):
        score, why = desk.check(expected, garbled)
        assert score == 0.0 and why.startswith("cannot verify")


def test_teacher_errs_at_the_configured_rate(desk):
    rng = random.Random(7)
    requests = [desk.sample_request("after", "train", rng) for _ in range(2000)]
    answers = [desk.teacher_answer(r, rng) for r in requests]
    verdicts = [desk.check(a, r.metadata) for a, r in zip(answers, requests, strict=True)]
    error_rate = sum(score == 0.0 for score, _ in verdicts) / len(verdicts)
    assert abs(error_rate - desk.scenario.teacher.error_rate) < 0.02
    assert any(why.startswith("stale") for _, why in verdicts)


def test_teacher_serve_reads_requests_back_from_questions(desk):
    serve = desk.teacher_serve("before", seed=1)
    golden = [g for g in desk.golden_set() if g.phase == "before"]
    answers = serve([g.messages for g in golden])
    accuracy = sum(a == g.expected for a, g in zip(answers, golden, strict=True)) / len(golden)
    assert accuracy > 0.8
    assert desk.parse_question("where is ORDER  #12345?") == ("track_order", {"order": "#12345"})
    with pytest.raises(ValueError, match="matches no template"):
        desk.parse_question("What is the meaning of life?")


def test_user_feedback_follows_correctness(desk):
    rng = random.Random(3)
    up = Counter()
    for i in range(3000):
        request = desk.sample_request("before", "train", rng)
        right = desk.expected_answer(request.intent, request.slots, "before")
        correct = i % 2 == 0
        events = desk.user_feedback(request, right if correct else "I do not know.", rng)
        for event in events:
            if "score" in event:
                up[correct, event["score"]] += 1
                assert event["label"] == ("thumbs_up" if event["score"] == 1.0 else "thumbs_down")
            if event.get("label") == "agent_edit":
                assert not correct and event["correction"] == right
            if "outcome" in event:
                assert not correct and event["outcome"] == "ticket_reopened"
    assert up[True, 1.0] / (up[True, 1.0] + up[True, 0.0]) > 0.8
    assert up[False, 1.0] / (up[False, 1.0] + up[False, 0.0]) < 0.2


def test_pretraining_and_corpus(desk):
    conversations = desk.pretraining_conversations(300)
    assert conversations == desk.pretraining_conversations(300)
    base = {n for n, i in desk.scenario.intents.items() if i.in_base}
    for _, user, assistant in conversations:
        intent, slots = desk.parse_question(user["content"])
        assert intent in base and assistant["content"] == desk.expected_answer(intent, slots, "before")
    vocabulary = {w for text in desk.corpus_texts() for w in text.split()}
    for g in desk.golden_set():
        assert set(g.messages[-1]["content"].split()) | set(g.expected.split()) <= vocabulary


def test_simulate_traffic_goes_through_capture(desk, tmp_path):
    landing = tmp_path / "landing"
    capture.configure(landing)
    stats = simulate_traffic(desk, 50, "after", desk.teacher_serve("after", seed=2), model="teacher",
                             model_version=None, who="teacher", seed=5, batch_size=16)
    capture.flush()
    records = [json.loads(line) for name in list_segments(landing)
               for line in (landing / name).read_text().splitlines()]
    interactions = [r for r in records if r["kind"] == "interaction"]
    feedbacks = [r for r in records if r["kind"] == "feedback"]
    assert stats.requests == len(interactions) == 50
    assert sum(v["requests"] for v in stats.by_intent.values()) == 50
    assert len(feedbacks) == stats.feedback_events > 0
    assert {f["interaction_id"] for f in feedbacks} <= {i["interaction_id"] for i in interactions}
    correct = 0
    for record in interactions:
        meta = json.loads(record["metadata"])
        assert set(meta) == {"intent", "slots", "phase"} and meta["phase"] == "after"
        assert record["task"] == "support_answer" and record["model"] == "teacher"
        assert record["prompt"] == record["messages"][-1]["content"]
        assert record["prompt_tokens"] > 0 and record["completion_tokens"] > 0
        correct += desk.check(record["response"], record["metadata"])[0]
    assert correct == stats.correct >= 40  # the teacher errs about 8% of the time
    assert stats.cost_usd == pytest.approx(sum(r["cost_usd"] for r in interactions))

    again = simulate_traffic(desk, 50, "after", desk.teacher_serve("after", seed=2), model="teacher",
                             model_version=None, who="teacher", seed=5)
    assert (again.correct, again.feedback_events, again.by_intent) == (stats.correct, stats.feedback_events,
                                                                       stats.by_intent)
    capture.flush()


def test_example_app_plugs_in_through_its_task_yaml_judge_corpus_and_golden_file(desk, monkeypatch, tmp_path):
    from continuum_pipeline.judge.base import JudgeInput
    from continuum_pipeline.scenario import example
    from continuum_pipeline.task.config import load_task_config

    monkeypatch.delenv("CONTINUUM_SCENARIO", raising=False)
    task = load_task_config(example.PACKAGED_TASK)
    assert task.name == "support_answer" and task.base_model.builtin
    assert task.base_model.pretraining_corpus == "continuum_pipeline.scenario.example:pretraining_corpus"
    (spec,) = task.judges
    assert spec.kind == "python" and spec.function == "continuum_pipeline.scenario.example:kb_check"

    # the judge's version names the KB phase in effect (CONTINUUM_SCENARIO_PHASE): a policy change relabels
    slots = {"order": "#44763"}
    meta = {"intent": "refund_status", "slots": slots}
    answers = {phase: desk.expected_answer("refund_status", slots, phase) for phase in ("before", "after")}
    verdicts, versions = {}, {}
    for phase in ("before", "after"):
        monkeypatch.setenv("CONTINUUM_SCENARIO_PHASE", phase)
        judge = spec.build()
        versions[phase] = judge.version
        verdicts[phase] = [v.score for v in judge.judge([JudgeInput("i1", None, None, a, meta)
                                                         for a in (answers["before"], answers["after"])])]
    assert versions["before"].endswith(f"-{desk.scenario.name}-before")
    assert versions["after"].endswith(f"-{desk.scenario.name}-after") and versions["before"] != versions["after"]
    assert verdicts == {"before": [1.0, 0.0], "after": [0.0, 1.0]}  # the stale answer is wrong after the change
    monkeypatch.setenv("CONTINUUM_SCENARIO_PHASE", "later")
    with pytest.raises(ValueError, match="later"):
        example.phase()
    monkeypatch.setenv("CONTINUUM_SCENARIO_PHASE", "before")
    with pytest.raises(ValueError, match="no scenario intent"):  # unverifiable is an error, never a 0
        example.kb_check(JudgeInput("i2", None, None, answers["before"], {"dish": "ramen"}))

    # builtin:tiny's corpus: conversations the base model knows, and the tokenizer's vocabulary texts
    corpus = example.pretraining_corpus(40)
    assert corpus["conversations"] == desk.pretraining_conversations(40) and corpus["texts"] == desk.corpus_texts()

    # the packaged golden file is what the scenario generates (regenerated, it is byte for byte the same)
    packaged = example.PACKAGED_TASK.parent / task.golden_sets[0].file
    assert example.write_golden_file(tmp_path / "golden.jsonl", desk).read_bytes() == packaged.read_bytes()
    rows = [json.loads(line) for line in packaged.read_text().splitlines()]
    assert {r["metadata"]["intent_group"] for r in rows} == {"changed_intents", "unchanged_intents"}
    assert {r["id"] for r in rows} <= {g.golden_id for g in desk.golden_set()}


def test_nothing_outside_the_example_app_imports_it():
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "continuum_pipeline"
    offenders = []
    for path in package.rglob("*.py"):
        if "scenario" in path.relative_to(package).parts[:1]:
            continue
        here = ["continuum_pipeline", *path.relative_to(package).with_suffix("").parts][:-1]  # its package
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])])
                names = [module] + [f"{module}.{a.name}" for a in node.names]
            else:
                continue
            if any(n == "continuum_pipeline.scenario" or n.startswith("continuum_pipeline.scenario.") for n in names):
                offenders.append(f"{path.relative_to(package)}:{node.lineno}")
    assert not offenders, f"only the example app (continuum_pipeline/scenario/) may import it: {offenders}"
