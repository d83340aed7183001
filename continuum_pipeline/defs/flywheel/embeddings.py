"""The task's user-turn embeddings (an incremental Iceberg cache), and the sft_dataset's selection step.

`<task>/embeddings` embeds each candidate's user turn once per embedder version: a rematerialization embeds
only what is new. sft_dataset's near-dup removal and selection (curation/selection.py) read it, score
uncertainty with the champion out of process (cached per model version and content hash), and report
coverage and a PCA map of what was selected.
"""


import dagster as dg

from continuum_pipeline.defs.flywheel.keys import group, key
from continuum_pipeline.defs.metadata import column_schema, markdown_table, png_markdown, table_rows
from continuum_pipeline.defs.resources import FlywheelResource, LakeResource, MLflowResource
from continuum_pipeline.task.config import TaskConfig


def _embedder(task: TaskConfig, mlflow: MLflowResource, flywheel: FlywheelResource):
    from continuum_pipeline.curation import embeddings

    threads = task.training.threads
    if task.curation.embedder == "minilm" and embeddings.minilm_available():
        return embeddings.minilm(threads=threads)
    from continuum_pipeline.defs.flywheel.training import start_model

    model_dir, name = start_model(task, mlflow, flywheel)  # the champion's own view (the base before v1)
    return embeddings.hidden_state(model_dir, name, threads=threads)


def _append(the_lake, table: str, rows) -> None:
    if not rows.num_rows:
        return
    if the_lake.table_exists(table):
        the_lake.append_rows(table, rows)
    else:
        the_lake.replace_table(table, rows)


def embeddings_asset(task: TaskConfig) -> dg.AssetsDefinition:
    from continuum_pipeline.curation.embeddings import minilm_available

    # the hidden-state embedder reads the champion, or before v1 the base model: built first
    with_model = task.curation.embedder == "champion" or not minilm_available()

    @dg.asset(key=key(task, "embeddings"), group_name=group(task, "curation"),
              deps=[key(task, "sft_candidates"), *([key(task, "base_model")] if with_model else [])],
              kinds={"iceberg", "pytorch"},
              description="User-turn embeddings of the task's candidates (all-MiniLM-L6-v2, or the champion's mean "
                          "hidden state), one row per (content hash, embedder version): each text is embedded "
                          "once, a rematerialization embeds only new ones.")
    def _embeddings(context: dg.AssetExecutionContext, lake: LakeResource, mlflow: MLflowResource,
                    flywheel: FlywheelResource) -> dg.MaterializeResult:
        from continuum_pipeline.curation.embeddings import embed_cached, user_turn

        the_lake = lake.lake()
        candidates = the_lake.read_arrow(task.table("sft_candidates")).select(["messages"]).to_pylist()
        texts = sorted({user_turn(r["messages"]) for r in candidates})
        table = task.table("embeddings")
        cached = the_lake.read_arrow(table) if the_lake.table_exists(table) else None
        embedder = _embedder(task, mlflow, flywheel)
        batch = embed_cached(texts, embedder, cached)
        _append(the_lake, table, batch.new_rows)
        context.log.info(f"{task.name}/embeddings: {batch.computed} embedded with {embedder.version}, "
                         f"{len(texts) - batch.computed} from the cache")
        from continuum_pipeline.curation.embeddings import EMBEDDINGS

        return dg.MaterializeResult(metadata={
            "dagster/row_count": table_rows(the_lake.table(table)) if the_lake.table_exists(table) else 0,
            "dagster/column_schema": column_schema(EMBEDDINGS),
            "embedder": embedder.version, "texts": len(texts), "computed": batch.computed,
            "from_cache": len(texts) - batch.computed,
            "dimensions": int(batch.vectors.shape[1]) if len(texts) else 0,
        })

    return _embeddings


NEEDS_MODEL = ("uncertainty", "active_learning")  # strategies that score with the champion (mlflow, flywheel)


def select_rows(context, the_lake, task: TaskConfig, dataset, mlflow: MLflowResource | None = None,
                flywheel: FlywheelResource | None = None) -> dict:
    """Near-dup removal and the task's selection strategy on the curated dataset (in place); its metadata.
    `mlflow` and `flywheel` are needed by the strategies in NEEDS_MODEL only."""
    import numpy as np

    from continuum_pipeline.curation import report
    from continuum_pipeline.curation.embeddings import lookup, user_turn
    from continuum_pipeline.curation.selection import Providers, refine
    from continuum_pipeline.curation.uncertainty import UNCERTAINTY, scored_cached
    from continuum_pipeline.defs.flywheel.training import start_model

    spec = task.curation
    emb_table = task.table("embeddings")
    cached_embeddings = the_lake.read_arrow(emb_table) if the_lake.table_exists(emb_table) else None

    def embed(texts: list[str]):
        vectors = lookup(texts, cached_embeddings)
        if vectors is None and spec.strategy in ("diversity", "core_set", "active_learning"):
            raise dg.Failure(f"{task.name}/embeddings lacks some of the dataset's user turns: materialize "
                             f"{task.name}/embeddings before {task.name}/sft_dataset (the training job does)")
        return vectors

    def uncertainty(hashes: list[str], conversations: list[list[dict]]):
        if mlflow is None or flywheel is None:
            raise dg.Failure(f"curation.strategy {spec.strategy} scores with the champion: the asset needs the "
                             "mlflow and flywheel resources")
        model_dir, name = start_model(task, mlflow, flywheel)
        table = task.table("uncertainty")
        cached = the_lake.read_arrow(table) if the_lake.table_exists(table) else None
        context.log.info(f"uncertainty: mean target NLL under {name} for {len(hashes)} rows (cached per version)")
        nll, new_rows = scored_cached(hashes, conversations, name, model_dir, cached, task.training.threads)
        _append(the_lake, table, new_rows.cast(UNCERTAINTY))
        return nll

    def anchors():
        # what the previous dataset version trained on: the table before this build replaces it
        previous = task.table("sft_dataset")
        if not the_lake.table_exists(previous):
            return None
        rows = the_lake.read_arrow(previous).to_pylist()
        texts = [user_turn(r["messages"][:-1]) for r in rows if r["split"] == "train"]
        return lookup(texts, cached_embeddings) if texts else None

    selection = refine(dataset, spec, Providers(embed=embed if cached_embeddings is not None else None,
                                                uncertainty=uncertainty, anchors=anchors))
    meta: dict = {"strategy": spec.strategy, "selected_rows": selection.selected,
                  "eligible_train_rows": selection.eligible, "near_dup_clusters": len(selection.clusters)}
    rewards = selection.rewards[selection.chosen] if selection.rewards is not None else np.empty(0)
    summary = report.reward_summary(rewards)
    if summary:
        meta["mean_reward"], meta["min_reward"] = summary["mean"], summary["min"]
        meta["reward_distribution"] = dg.MetadataValue.md(markdown_table(
            ["reward", "selected rows"], report.reward_histogram(rewards)))
    if selection.clusters:
        meta["near_duplicate_clusters"] = dg.MetadataValue.md(markdown_table(
            ["kept interaction", "cluster size", "reward", "removed (first 5)"],
            [(c["kept"], c["size"], f"{c['reward']:.2f}", ", ".join(c["removed"][:5]))
             for c in selection.clusters[:20]]))
    if selection.embeddings is not None and len(selection.embeddings):
        cover = report.coverage(selection.embeddings, selection.chosen)
        meta["coverage"] = cover["coverage"]
        meta["coverage_regions"] = f"{cover['covered']} of {cover['regions']} input regions have a selected row"
        png = report.pca_png(selection.embeddings, selection.chosen,
                             f"{task.name}: {spec.strategy}, {selection.selected} of {selection.eligible} train rows")
        if flywheel is not None:  # also as a file, for tools that do not render inline images
            path = flywheel.task_dir(task.name) / "curation" / f"{context.run_id}-map.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
            meta["selection_map_png"] = dg.MetadataValue.path(str(path))
        meta["selection_map"] = png_markdown(png, "PCA of user-turn embeddings, selected vs not")
    return meta
