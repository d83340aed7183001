"""The golden set and the eval gate: a blocking check on every candidate model."""

import dagster as dg

from continuum_pipeline.defs.metadata import column_schema, latest_metadata, markdown_table
from continuum_pipeline.defs.resources import FlywheelResource, LakeResource, MLflowResource, ScenarioResource


@dg.asset(group_name="evaluation", kinds={"iceberg"},
          description="Held-out questions with known answers (slices by intent, changed / unchanged intents), "
                      "for the knowledge base in effect; a new version only when its content changes.")
def golden_set(context: dg.AssetExecutionContext, lake: LakeResource, scenario: ScenarioResource) -> dg.MaterializeResult:
    from continuum_pipeline.evaluation.golden import golden_table, version

    the_lake = lake.lake()
    table = golden_table(scenario.desk(), scenario.phase)
    golden_version = version(table)
    current = the_lake.table("golden_set").current_snapshot() if the_lake.table_exists("golden_set") else None
    if current is not None and current.summary.additional_properties.get("continuum.golden-version") == golden_version:
        snapshot_id = current.snapshot_id  # unchanged: keep the version
    else:
        snapshot_id = the_lake.replace_table("golden_set", table, {"continuum.golden-version": golden_version})
    slices = table.group_by("intent").aggregate([("golden_id", "count")]).to_pylist()
    return dg.MaterializeResult(metadata={
        "dagster/row_count": table.num_rows,
        "dagster/column_schema": column_schema(table.schema),
        "golden_set_version": golden_version,
        "snapshot_id": str(snapshot_id),
        "phase": scenario.phase,
        "summary": dg.MetadataValue.md(markdown_table(["intent", "examples"],
                                                      [(r["intent"], r["golden_id_count"]) for r in slices])),
    })


class GateConfig(dg.Config):
    base_margin: float = 0.03  # how much worse than the champion a slice may get
    one_example_slack: bool = True  # small slices may lose one example (margin ≥ 1/n)


@dg.asset_check(asset="candidate_model", blocking=True, additional_deps=["golden_set"],
                description="Candidate vs champion on every golden slice; fails when any slice drops beyond its "
                            "margin, and then nothing downstream (the registered model) is materialized.")
def eval_gate(context: dg.AssetCheckExecutionContext, config: GateConfig, lake: LakeResource, mlflow: MLflowResource,
              scenario: ScenarioResource, flywheel: FlywheelResource) -> dg.AssetCheckResult:
    from continuum_pipeline.evaluation import golden
    from continuum_pipeline.evaluation.gate import compare
    from continuum_pipeline.registry import models

    items = golden.examples(lake.lake().read_arrow("golden_set"))
    candidate_dir = latest_metadata(context.instance, "candidate_model")["merged_dir"]
    champion = models.champion(mlflow.tracking_uri, mlflow.model_name)
    champion_dir = (models.model_dir(mlflow.tracking_uri, champion, flywheel.models_dir / "registry") if champion
                    else flywheel.models_dir / "base")
    champion_name = f"v{champion.version}" if champion else "base"
    desk = scenario.desk()
    context.log.info(f"eval gate: candidate vs {champion_name} on {len(items)} golden examples")
    ok_champion = golden.evaluate(champion_dir, items, desk.check)
    ok_candidate = golden.evaluate(candidate_dir, items, desk.check)
    sizes = {s: sum(s in ex.slices for ex in items) for ex in items for s in ex.slices}
    margins = {s: max(config.base_margin, 1.0 / n if config.one_example_slack else 0.0) for s, n in sizes.items()}
    result = compare(items, ok_champion, ok_candidate, margins, config.base_margin)
    rows = [(r["slice"], r["n"], r["champion"], r["candidate"], f"{r['delta']:+.3f}", r["margin"], r["p_value"],
             "pass" if r["passed"] else "**FAIL**") for r in result.table()]
    table = markdown_table(["slice", "n", champion_name, "candidate", "delta", "margin", "McNemar p", ""], rows)
    overall = next(s for s in result.slices if s.slice == "all")
    verdict = ("passes every slice" if result.passed else
               "is worse beyond the margin on: " + ", ".join(s.slice for s in result.failures))
    context.log.info(f"eval gate: candidate {overall.candidate:.0%} vs {champion_name} {overall.champion:.0%} "
                     f"on all {overall.n}; the candidate {verdict}")
    return dg.AssetCheckResult(
        passed=result.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"candidate {verdict}",
        metadata={"champion": champion_name, "candidate_success": overall.candidate,
                  "champion_success": overall.champion, "failed_slices": len(result.failures),
                  "slices": dg.MetadataValue.md(table)},
    )
