"""Curation: near-duplicate throughput/recall against datasketch, and learning per example by selection strategy.

Part 1 (seconds): a corpus of short support-like texts with injected near-duplicates (a word swapped,
dropped or added, case and punctuation changed) whose true word-bigram Jaccard with their original is ≥ 0.7.
Both the project's numpy MinHash-LSH and datasketch's MinHash + MinHashLSH (same num_perm, same threshold,
same shingles) cluster it end to end; recall = share of injected pairs (true J ≥ 0.7) found, docs/s = corpus
size / wall time. Each path runs in every round; the best round is reported (the machine is shared).

Part 2 (minutes, `--train`): the support desk with Zipf-skewed traffic (the scenario's `traffic_skew` knob),
teacher-served and labelled through the real pipeline (ingest → reward labels → SQL → curation); then v1 is
trained from the base on datasets of the same size (`--fraction` of the eligible rows) chosen by each
strategy and by a random sample, and on everything; each answers the golden set. Prints success overall and
on the rarest intents (by traffic weight), training time. Writes bench/results/curation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from continuum_pipeline.curation.near_dup import MinHasher, near_duplicates, normalise  # noqa: E402

_WORDS = ("order refund password account invoice delivery shipping card payment address subscription cancel "
          "upgrade plan login email phone return exchange warranty store pickup tracking number damaged item "
          "missing package late billing charge twice coupon discount gift receipt size colour stock")
WORDS = _WORDS.split()
STARTS = ("how do i", "where is my", "can i", "why was my", "what happens to my", "i want to", "please help with my",
          "is it possible to", "when will my", "who do i contact about my")


def _jaccard(a: str, b: str, k: int = 2) -> float:
    def grams(t: str) -> set[str]:
        w = normalise(t)
        return {" ".join(w[i:i + k]) for i in range(max(1, len(w) - k + 1))}
    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb)


def corpus(n: int, dup_share: float, seed: int) -> tuple[list[str], list[tuple[int, int]]]:
    """n texts; a `dup_share` of them are edits of an earlier text. Returns texts and the injected pairs with J ≥ 0.7."""
    rng = random.Random(seed)
    texts: list[str] = []
    pairs: list[tuple[int, int]] = []
    originals = int(n * (1 - dup_share))
    for _ in range(originals):
        texts.append(f"{rng.choice(STARTS)} {' '.join(rng.choice(WORDS) for _ in range(rng.randint(8, 16)))} "
                     f"{rng.randint(1000, 99999)}")
    while len(texts) < n:
        src = rng.randrange(originals)
        words = texts[src].split()
        edit = rng.choice(("swap", "drop", "add", "case"))
        position = rng.randrange(len(words))
        if edit == "swap":
            words[position] = rng.choice(WORDS)
        elif edit == "drop" and len(words) > 6:
            del words[position]
        elif edit == "add":
            words.insert(position, rng.choice(WORDS))
        else:
            words = [w.upper() if rng.random() < 0.3 else w for w in words]
            words[-1] += rng.choice("?!.")
        text = " ".join(words)
        texts.append(text)
        if _jaccard(texts[src], text) >= 0.7:
            pairs.append((src, len(texts) - 1))
    return texts, pairs


def _recall(cluster_of, pairs: list[tuple[int, int]]) -> float:
    return sum(cluster_of(a) == cluster_of(b) for a, b in pairs) / max(len(pairs), 1)


def run_numpy(texts: list[str], threshold: float, num_perm: int) -> tuple[float, float, dict]:
    started = time.perf_counter()
    result = near_duplicates(texts, [1.0] * len(texts), list(range(len(texts))), threshold=threshold,
                             hasher=MinHasher(num_perm=num_perm, shingle_size=2))
    seconds = time.perf_counter() - started
    return seconds, result.cluster, {"bands": result.bands, "rows": result.rows,
                                     "candidate_pairs": result.candidate_pairs}


def run_datasketch(texts: list[str], threshold: float, num_perm: int) -> tuple[float, list[int]]:
    """datasketch's documented path: MinHash.bulk per document's shingles, MinHashLSH insert + query, union-find."""
    from datasketch import MinHash, MinHashLSH

    started = time.perf_counter()
    shingled = []
    for t in texts:
        w = normalise(t)
        shingled.append([" ".join(w[i:i + 2]).encode() for i in range(max(1, len(w) - 1))])
    sigs = MinHash.bulk(shingled, num_perm=num_perm)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, m in enumerate(sigs):
        for j in lsh.query(m):
            # LSH candidates verified by estimated Jaccard, as the numpy path does
            if m.jaccard(sigs[j]) >= threshold:
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
        lsh.insert(i, m)
    cluster = [find(i) for i in range(len(texts))]
    return time.perf_counter() - started, cluster


def near_dup_bench(n: int, rounds: int, threshold: float, num_perm: int) -> dict:
    texts, pairs = corpus(n, 0.2, seed=7)
    print(f"near-dup corpus: {n} texts, {len(pairs)} injected pairs with J ≥ 0.7 (word bigrams)", flush=True)
    best_np, best_ds = float("inf"), float("inf")
    for r in range(rounds):
        s_np, c_np, info = run_numpy(texts, threshold, num_perm)
        s_ds, c_ds = run_datasketch(texts, threshold, num_perm)
        best_np, best_ds = min(best_np, s_np), min(best_ds, s_ds)
        print(f"  round {r + 1}: numpy {n / s_np:,.0f} docs/s, datasketch {n / s_ds:,.0f} docs/s", flush=True)
    recall_np = _recall(lambda i: c_np[i], pairs)
    recall_ds = _recall(lambda i: c_ds[i], pairs)
    out = {"texts": n, "injected_pairs": len(pairs), "threshold": threshold, "num_perm": num_perm, **info,
           "numpy_docs_per_s": n / best_np, "datasketch_docs_per_s": n / best_ds,
           "ratio": best_ds / best_np, "numpy_recall": recall_np, "datasketch_recall": recall_ds}
    print(f"\n| path | docs/s | recall (J ≥ 0.7) |\n|---|---|---|\n"
          f"| numpy MinHash-LSH ({info['bands']}×{info['rows']}) | {out['numpy_docs_per_s']:,.0f} | {recall_np:.3f} |\n"
          f"| datasketch MinHashLSH | {out['datasketch_docs_per_s']:,.0f} | {recall_ds:.3f} |\n"
          f"ratio {out['ratio']:.2f}×", flush=True)
    return out


def _say(text: str) -> None:
    print(text, flush=True)


def training_bench(args: argparse.Namespace) -> dict:
    """The support desk with skewed traffic through ingest → labels → SQL → curate_sft; then one v1 per arm."""
    import tempfile

    import numpy as np

    home = Path(tempfile.mkdtemp(prefix="continuum-bench-curation-"))
    os.environ.update({"CONTINUUM_HOME": str(home), "CONTINUUM_SCENARIO_PHASE": "before",
                       "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})
    from continuum_pipeline import capture
    from continuum_pipeline.cli import prepare_home, run_job
    from continuum_pipeline.scenario import SupportDesk, example, load_scenario, simulate_traffic
    from continuum_pipeline.settings import get_settings
    from continuum_pipeline.task.config import load_task_config

    os.environ["CONTINUUM_TASKS"] = str(example.PACKAGED_TASK)
    settings = get_settings()
    prepare_home(settings)
    task = load_task_config(example.PACKAGED_TASK)
    desk = SupportDesk(load_scenario(), traffic_skew=args.skew)
    capture.configure(settings.landing_dir)
    from datetime import UTC, datetime, timedelta

    day0 = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0) - timedelta(days=args.days + 1)
    _say(f"\nTraining comparison: {args.days} days × {args.per_day} teacher-served requests, Zipf skew {args.skew}")
    for day in range(1, args.days + 1):
        simulate_traffic(desk, args.per_day, "before", desk.teacher_serve("before", seed=day), model="teacher",
                         model_version=None, who="teacher", seed=desk.scenario.seed + day,
                         start=day0 + timedelta(days=day - 1))
    capture.flush()
    for job in ("ingest_job", f"{task.name}_monitoring_job"):
        started = time.perf_counter()
        ok = run_job(job, settings=settings, raise_on_error=False).success
        _say(f"  {job}: {'ok' if ok else 'FAILED'} in {time.perf_counter() - started:.0f}s")

    from continuum_pipeline.curation.dataset import curate_sft
    from continuum_pipeline.curation.embeddings import embed_cached, minilm, user_turn
    from continuum_pipeline.curation.selection import Providers, refine
    from continuum_pipeline.curation.uncertainty import scored_cached
    from continuum_pipeline.defs.flywheel.curation import curation_policy
    from continuum_pipeline.lake.catalog import Lake
    from continuum_pipeline.training import base_model as builder

    lake = Lake.from_settings(settings)
    candidates = lake.read_arrow(task.table("sft_candidates"))

    def curated():
        return curate_sft(candidates, curation_policy(lake, task))

    base = curated()
    train_rows = [r for r in base.table.to_pylist() if r["split"] == "train"]
    intent_of = {r["content_hash"]: json.loads(m)["intent"] for r, m in
                 zip(candidates.to_pylist(), candidates["metadata"].to_pylist(), strict=True) if m}
    _say(f"  curated: {base.table.num_rows} rows ({len(train_rows)} train) from {base.candidates} candidates")

    started = time.perf_counter()
    spec = task.base_model
    conversations, texts = builder.pretraining_corpus(spec.pretraining_corpus, spec.pretraining_conversations,
                                                      lambda: [])
    base_dir = builder.build_base_model(conversations, texts, home / "base", builder.BaseModelConfig(),
                                        say=lambda _: None)
    _say(f"  base model built in {time.perf_counter() - started:.0f}s")

    started = time.perf_counter()
    embedder = minilm(threads=args.threads)
    all_texts = [user_turn(r["messages"][:-1]) for r in train_rows]
    vectors = embed_cached(all_texts, embedder, None)
    embed_s = time.perf_counter() - started
    by_text = dict(zip(all_texts, vectors.vectors, strict=True))
    _say(f"  embeddings: {vectors.computed} distinct user turns in {embed_s:.1f}s "
         f"({vectors.computed / embed_s:.0f}/s incl. model load)")
    started = time.perf_counter()
    nll, _ = scored_cached([r["content_hash"] for r in train_rows], [r["messages"] for r in train_rows], "base",
                           base_dir, None, threads=args.threads)
    nll_of = dict(zip([r["content_hash"] for r in train_rows], nll, strict=True))
    _say(f"  uncertainty under the base: {len(train_rows)} rows in {time.perf_counter() - started:.1f}s")

    providers = Providers(embed=lambda ts: np.stack([by_text[t] for t in ts]),
                          uncertainty=lambda hashes, _: np.array([nll_of[h] for h in hashes]))
    weights = desk.traffic_weights("before")
    rare = sorted(weights, key=weights.get)[:args.rare]
    golden = [g for g in desk.golden_set() if g.phase == "before"]
    arms: dict[str, object] = {}
    everything = curated()
    refine(everything, task.curation.model_copy(update={"strategy": "all", "target_size": None}), providers)
    arms["everything"] = everything
    k = round(args.fraction * sum(1 for s in everything.table["split"].to_pylist() if s == "train"))
    rng = random.Random(0)
    sample = curated()
    refine(sample, task.curation.model_copy(update={"strategy": "all", "target_size": None}), providers)
    train_idx = [i for i, s in enumerate(sample.table["split"].to_pylist()) if s == "train"]
    chosen = set(rng.sample(train_idx, k))
    sample.table = sample.table.filter([s != "train" or i in chosen for i, s in
                                        enumerate(sample.table["split"].to_pylist())])
    arms["random sample"] = sample
    for strategy in ("uncertainty", "diversity", "core_set", "active_learning"):
        d = curated()
        refine(d, task.curation.model_copy(update={"strategy": strategy, "target_size": k}), providers)
        arms[strategy] = d

    from continuum_pipeline.evaluation import golden as golden_eval
    from continuum_pipeline.training.sft import SFTRunConfig

    rows = []
    t = task.training
    n_all = sum(1 for s in everything.table["split"].to_pylist() if s == "train")
    everything_steps = -(-n_all // t.batch_size) * int(t.epochs)  # what training on everything takes
    plan = [(policy, name, d) for policy in args.policies for name, d in arms.items()
            if (not args.arms or name in args.arms) and not (policy == "steps" and name == "everything")]
    for policy, name, d in plan:
        work = home / "arms" / policy / name.replace(" ", "_")
        work.mkdir(parents=True, exist_ok=True)
        data = d.table.to_pylist()
        for split in ("train", "validation"):
            (work / f"{split}.jsonl").write_text("".join(json.dumps({"messages": r["messages"]}) + "\n"
                                                         for r in data if r["split"] == split))
        config = SFTRunConfig(base_model=str(base_dir), train_file=str(work / "train.jsonl"),
                              eval_file=str(work / "validation.jsonl"), output_dir=str(work / "out"),
                              lora_r=t.lora.r, lora_alpha=t.lora.alpha or 2 * t.lora.r, epochs=t.epochs,
                              learning_rate=t.learning_rate, batch_size=t.batch_size, max_length=t.max_length,
                              max_steps=everything_steps if policy == "steps" else -1,
                              seed=t.seed, threads=args.threads, mlflow_tracking_uri=settings.mlflow_uri,
                              run_name=f"bench-curation-{name}")
        (work / "config.json").write_text(json.dumps(config.__dict__))
        started = time.perf_counter()
        import subprocess

        done = subprocess.run([sys.executable, "-m", "continuum_pipeline.training.sft", str(work / "config.json")],
                              capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        seconds = time.perf_counter() - started
        if done.returncode:
            _say(f"  {name}: training FAILED: {done.stderr[-800:]}")
            continue
        trained = json.loads(done.stdout.strip().splitlines()[-1])
        merged = trained["merged_dir"]
        items = [golden_eval.GoldenItem(g.golden_id, (g.intent,), g.messages, (), {}) for g in golden]
        answers = golden_eval.answer(merged, items)
        ok = [desk.check(a, {"intent": g.intent, "slots": g.slots, "phase": "before"})[0] >= 0.5
              for g, a in zip(golden, answers, strict=True)]
        rare_ok = [o for g, o in zip(golden, ok, strict=True) if g.intent in rare]
        train_n = sum(1 for r in data if r["split"] == "train")
        intents = {intent_of.get(r["content_hash"]) for r in data if r["split"] == "train"}
        row = {"policy": policy, "arm": name, "train_rows": train_n, "intents_covered": len(intents - {None}),
               "golden_success": sum(ok) / len(ok), "rare_success": sum(rare_ok) / max(len(rare_ok), 1),
               "train_seconds": trained["seconds"], "process_seconds": seconds}
        rows.append(row)
        _say(f"  [{policy}] {name}: {train_n} train rows, {row['intents_covered']} intents, golden {row['golden_success']:.1%}, "
             f"rare {row['rare_success']:.1%}, trained in {trained['seconds']:.0f}s ({seconds:.0f}s with process "
             "start, model load and MLflow logging)")
    _say(f"\nrarest intents ({args.rare}): {', '.join(rare)}; 'epochs': every arm trains {t.epochs:g} epochs "
         f"(less data, fewer steps); 'steps': every arm trains {everything_steps} steps, as many as everything\n"
         "| budget | arm | train rows | intents in train | golden success | rare-intent success | training s | "
         "process s |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        _say(f"| {r['policy']} | {r['arm']} | {r['train_rows']} | {r['intents_covered']} | {r['golden_success']:.1%} | "
             f"{r['rare_success']:.1%} | {r['train_seconds']:.0f} | {r['process_seconds']:.0f} |")
    return {"home": str(home), "rare_intents": rare, "fraction": args.fraction, "skew": args.skew,
            "arms": rows, "embed_seconds": embed_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--train", action="store_true", help="also run the training comparison (minutes)")
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--skew", type=float, default=1.2, help="Zipf exponent of the traffic skew")
    parser.add_argument("--per-day", type=int, default=400)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each (sequential) training run")
    parser.add_argument("--rare", type=int, default=5, help="how many of the least-trafficked intents are 'rare'")
    parser.add_argument("--arms", nargs="*", help="only these arms (default: all)")
    parser.add_argument("--policies", nargs="+", default=["epochs", "steps"], choices=["epochs", "steps"],
                        help="training budget per arm: the task's epochs, and/or as many steps as everything")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    result: dict = {"near_dup": near_dup_bench(args.texts, args.rounds, args.threshold, args.num_perm)}
    targets = {"near-dup ≥ 3× datasketch": result["near_dup"]["ratio"] >= 3.0,
               "near-dup recall ≥ 0.9 at J ≥ 0.7": result["near_dup"]["numpy_recall"] >= 0.9}
    if args.train:
        result["training"] = training_bench(args)
        arms = {r["arm"]: r for r in result["training"]["arms"] if r["policy"] == args.policies[0]}
        chosen = [r for n, r in arms.items() if n not in ("everything", "random sample")]
        if chosen and "everything" in arms and "random sample" in arms:
            best = max(chosen, key=lambda r: (r["golden_success"], r["rare_success"]))
            targets[f"best strategy ({best['arm']}) at {args.fraction:.0%} ≥ everything"] = \
                best["golden_success"] >= arms["everything"]["golden_success"]
            targets[f"best strategy ({best['arm']}) beats a random sample on rare intents"] = \
                best["rare_success"] > arms["random sample"]["rare_success"]
    print("targets:", ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    result["targets"] = targets
    out = Path(__file__).parent / "results" / "curation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
