"""The task's golden sets and its eval gate: a blocking check on every candidate model."""

import dagster as dg

from continuum_pipeline.defs.flywheel.keys import golden_key, group, key
from continuum_pipeline.defs.flywheel.training import start_model
from continuum_pipeline.defs.metadata import column_schema, latest_metadata, markdown_table
from continuum_pipeline.defs.resources import FlywheelResource, LakeResource, MLflowResource
from continuum_pipeline.task.config import GoldenSetSpec, TaskConfig

VERSION_PROPERTY = "continuum.golden-version"


def _golden_set(task: TaskConfig, spec: GoldenSetSpec) -> dg.AssetsDefinition:
    source = (f"the file {spec.file}" if spec.file else
              f"a frozen sample of {spec.from_production.size} production interactions with reward ≥ "
              f"{spec.from_production.min_reward} that consent, the exclusion rules and sampling allow, never "
              "trained on")

    @dg.asset(key=golden_key(task, spec.name), group_name=group(task, "evaluation"), kinds={"iceberg"},
              deps=[key(task, "sft_candidates")] if spec.from_production else [],
              description=f"Golden set `{spec.name}` from {source}; sliced by "
                          f"{', '.join(spec.slices) or 'nothing but `all`'}. A new version only when its content changes.")
    def _asset(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        from continuum_pipeline.evaluation import golden

        the_lake = lake.lake()
        name = task.table(f"golden__{spec.name}")
        existing = the_lake.read_arrow(name) if the_lake.table_exists(name) else None
        removed: dict[str, int] = {}
        if spec.file:
            table = golden.read_golden_file(task.path(spec.file), spec.slices)
        else:
            from continuum_pipeline.privacy.rules import privacy_policy

            holdout = spec.from_production
            table = golden.production_holdout(the_lake.read_arrow(task.table("sft_candidates")), holdout.size,
                                              holdout.min_reward, holdout.seed, spec.slices, existing,
                                              privacy_policy(the_lake, task), removed)
        golden_version = golden.version(table)
        current = the_lake.table(name).current_snapshot() if existing is not None else None
        if current is not None and current.summary.additional_properties.get(VERSION_PROPERTY) == golden_version:
            snapshot_id = current.snapshot_id  # unchanged: keep the version
        else:
            snapshot_id = the_lake.replace_table(name, table, {VERSION_PROPERTY: golden_version})
        counts: dict[str, int] = {}
        for slices in table["slices"].to_pylist():
            for s in slices:
                counts[s] = counts.get(s, 0) + 1
        context.log.info(f"{task.name}/golden/{spec.name}: {table.num_rows} examples, version {golden_version}")
        return dg.MaterializeResult(metadata={
            "dagster/row_count": table.num_rows,
            "dagster/column_schema": column_schema(table.schema),
            "golden_set_version": golden_version,
            "snapshot_id": str(snapshot_id),
            "summary": dg.MetadataValue.md(markdown_table(["slice", "examples"], sorted(counts.items()))),
            **({f"removed: {k}": v for k, v in removed.items()} | ({
                "privacy": dg.MetadataValue.md(markdown_table(["privacy filter", "rows removed"],
                                                              list(removed.items())))} if removed else {})),
        })

    return _asset


def golden_sets(task: TaskConfig) -> list[dg.AssetsDefinition]:
    return [_golden_set(task, spec) for spec in task.golden_sets]


def golden_versions(instance: dg.DagsterInstance, task: TaskConfig) -> dict[str, str]:
    return {spec.name: str(latest_metadata(instance, golden_key(task, spec.name)).get("golden_set_version", ""))
            for spec in task.golden_sets}


def eval_gate(task: TaskConfig) -> dg.AssetChecksDefinition:
    metrics = ", ".join(f"{m} ({p.judge}, min_delta {p.min_delta:+g})" for m, p in task.gate.metrics.items())

    @dg.asset_check(asset=key(task, "candidate_model"), name="eval_gate", blocking=True,
                    additional_deps=[golden_key(task, g.name) for g in task.golden_sets],
                    description=f"Candidate vs champion on every golden slice and metric ({metrics}); a slice fails "
                                "on a significant regression (Holm-corrected). A failed gate blocks registration.")
    def _eval_gate(context: dg.AssetCheckExecutionContext, lake: LakeResource, mlflow: MLflowResource,
                   flywheel: FlywheelResource) -> dg.AssetCheckResult:
        from continuum_pipeline.defs.flywheel.labels import build_judges
        from continuum_pipeline.evaluation import golden
        from continuum_pipeline.evaluation.gate import decide

        the_lake = lake.lake()
        examples: list = []
        for spec in task.golden_sets:
            prefix = f"{spec.name}/" if len(task.golden_sets) > 1 else ""
            examples += golden.items(the_lake.read_arrow(task.table(f"golden__{spec.name}")), prefix)
        if not examples:
            raise dg.Failure(f"{task.name}: the golden sets are empty; the gate cannot compare models on nothing "
                             "(add examples to the golden file, or capture more high-reward traffic)")
        candidate_dir = latest_metadata(context.instance, key(task, "candidate_model"))["merged_dir"]
        champion_dir, champion_name = start_model(task, mlflow, flywheel)
        context.log.info(f"eval gate: candidate vs {champion_name} on {len(examples)} golden examples")
        answers = {"champion": golden.answer(champion_dir, examples), "candidate": golden.answer(candidate_dir, examples)}
        gate_judges = {policy.judge for policy in task.gate.metrics.values()}
        judges = {j.name: j for j in build_judges(task, flywheel, gate_judges)}
        scores = {metric: (golden.score(judges[policy.judge], examples, answers["champion"]),
                           golden.score(judges[policy.judge], examples, answers["candidate"]))
                  for metric, policy in task.gate.metrics.items()}
        result = decide(task.gate, scores, [ex.slices for ex in examples])
        overall = {metric: result.row(metric, "all") for metric in task.gate.metrics}  # every set's items
        headline = "; ".join(f"{m}: candidate {r.candidate:.0%} vs {champion_name} {r.champion:.0%}"
                             for m, r in overall.items())
        verdict = ("passes every slice" if result.passed else
                   "fails on: " + ", ".join(f"{r.metric} {r.slice}" for r in result.failures))
        context.log.info(f"eval gate: {headline}; the candidate {verdict}")
        return dg.AssetCheckResult(
            passed=result.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"candidate {verdict}",
            metadata={"champion": champion_name, "failed_slices": len(result.failures),
                      **{f"{m}_candidate": float(r.candidate) for m, r in overall.items()},
                      **{f"{m}_champion": float(r.champion) for m, r in overall.items()},
                      "golden_versions": dg.MetadataValue.json(golden_versions(context.instance, task)),
                      "slices": dg.MetadataValue.md(f"Champion: **{champion_name}**\n\n" + result.markdown())},
        )

    return _eval_gate
