"""A second application that is not the support desk: a small recipe assistant answering from retrieved
recipe cards (RAG). It feeds the flywheel only through the public doors: `@capture` with contexts and
metadata, `feedback.record` with implicit signals and explicit scores, its own task YAML and golden file,
and a `python` judge (`ingredients_check`)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from continuum_pipeline import capture, feedback

TASK_DIR = Path(__file__).resolve().parent / "recipe_task"

RECIPES = {
    "carbonara": ("italian", "main", "eggs, pecorino, guanciale and black pepper"),
    "tiramisu": ("italian", "dessert", "mascarpone, eggs, espresso and ladyfingers"),
    "risotto": ("italian", "main", "arborio rice, broth, onion and parmesan"),
    "panna_cotta": ("italian", "dessert", "cream, sugar, gelatin and vanilla"),
    "ramen": ("japanese", "main", "noodles, broth, egg and scallions"),
    "mochi": ("japanese", "dessert", "glutinous rice flour, sugar and water"),
    "tempura": ("japanese", "main", "shrimp, flour, ice water and oil"),
    "dorayaki": ("japanese", "dessert", "flour, eggs, honey and red bean paste"),
}
QUESTIONS = ["What goes into {dish}?", "Which ingredients do I need for {dish}?", "What is {dish} made of?",
             "List the ingredients of {dish}.", "{dish}: what do I buy?"]
GOLDEN_QUESTIONS = ["Tell me the ingredients for {dish}.", "What do I need to cook {dish}?"]
# Later traffic asks in new words: new content for the dataset (repeats of old questions dedup away).
LATER_QUESTIONS = ["Ingredients for {dish}, please.", "Shopping list for {dish}?", "How is {dish} made, what's in it?",
                   "{dish} needs which ingredients?", "Remind me what {dish} contains.", "Which items make {dish}?"]


def answer_for(dish: str) -> str:
    return f"For {dish.replace('_', ' ')} you need {RECIPES[dish][2]}."


def card(dish: str) -> str:
    cuisine, kind, ingredients = RECIPES[dish]
    return f"Recipe card: {dish.replace('_', ' ')} ({cuisine} {kind}). Ingredients: {ingredients}."


def ingredients_check(item) -> tuple[float, str]:
    """The app's own verifier: the share of the dish's ingredients the answer names."""
    dish = item.metadata.get("dish")
    if dish not in RECIPES:
        raise ValueError(f"metadata has no known dish (got {dish!r}); only recipe answers can be checked")
    wanted = [w.strip() for w in RECIPES[dish][2].replace(" and ", ", ").split(",")]
    got = sum(w in (item.response or "") for w in wanted)
    return got / len(wanted), f"names {got} of {len(wanted)} ingredients"


def serve_traffic(n: int, seed: int, error_rate: float = 0.2, start: datetime | None = None,
                  model: str = "gpt-recipes", questions: list[str] = QUESTIONS) -> None:
    """`n` questions answered by a teacher model that is wrong `error_rate` of the time; users copy good answers,
    retry bad ones, and sometimes rate."""
    rng = random.Random(seed)
    start = start or datetime.now(UTC) - timedelta(days=1)

    @capture(task="recipe_answer", model=model, consent="granted")
    def answer(messages: list[dict], dish: str, wrong: bool, ts: datetime) -> str:
        capture.annotate(contexts=[card(dish)], ts=ts,
                         metadata={"dish": dish, "cuisine": RECIPES[dish][0], "kind": RECIPES[dish][1],
                                   "reference": answer_for(dish)})
        other = rng.choice([d for d in RECIPES if d != dish])
        return answer_for(other) if wrong else answer_for(dish)

    for i in range(n):
        dish = rng.choice(sorted(RECIPES))
        question = rng.choice(questions).format(dish=dish.replace("_", " "))
        wrong = rng.random() < error_rate
        messages = [{"role": "system", "content": "You answer cooking questions from the recipe cards."},
                    {"role": "user", "content": question}]
        answer(messages, dish, wrong, start + timedelta(minutes=i))
        iid = capture.last_interaction_id()
        feedback.record(iid, signal="retry" if wrong else "copy")
        if rng.random() < 0.3:
            feedback.record(iid, score=0.0 if wrong else 1.0)


def golden_rows() -> list[dict]:
    rows = []
    for dish, (cuisine, kind, _) in sorted(RECIPES.items()):
        for n, template in enumerate(GOLDEN_QUESTIONS):
            rows.append({"id": f"{dish}/{n}", "prompt": template.format(dish=dish.replace("_", " ")),
                         "system": "You answer cooking questions from the recipe cards.",
                         "reference": answer_for(dish),
                         "metadata": {"dish": dish, "cuisine": cuisine, "kind": kind}})
    return rows


if __name__ == "__main__":  # regenerate the golden file
    (TASK_DIR / "golden.jsonl").write_text("".join(json.dumps(r) + "\n" for r in golden_rows()))
