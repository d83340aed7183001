"""The drift trigger: train again when today's user turns no longer look like what the champion trained on.

The statistics and the decision are evaluation/drift.py's; this sensor reads the champion and its training
interactions (`model_lineage`), asks for a training through `request_training` (once per champion and day, one
training at a time, the cooldown; only with dataset-eligible data the champion did not train on), and writes the
day's numbers to `<task>__drift_daily` for the dashboard.
"""

import dagster as dg

from continuum_pipeline.defs.flywheel.triggers import champion, eligible_counts, request_training
from continuum_pipeline.defs.resources import LakeResource, MLflowResource
from continuum_pipeline.task.config import TaskConfig

TRIGGER = "drift"


def drift_sensor(task: TaskConfig, training_job) -> dg.SensorDefinition:
    spec = task.triggers.drift

    @dg.sensor(name=f"{task.name}_drift_sensor", job=training_job, minimum_interval_seconds=300,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"{task.name}: trains when the latest day's user turns drift from what the champion "
                           f"trained on: slice PSI above {spec.psi_threshold} or embedding centroid distance above "
                           f"{spec.centroid_threshold}. Once per champion and day; one training at a time. "
                           f"Numbers in {task.table('drift_daily')}.")
    def _drift(context: dg.SensorEvaluationContext, lake: LakeResource, mlflow: MLflowResource):
        from continuum_pipeline.evaluation import drift
        from continuum_pipeline.registry.lineage import version_lineage

        ref = champion(mlflow, task)
        if ref is None:
            return dg.SkipReason("no champion yet: drift compares today's traffic with what the champion trained on")
        the_lake = lake.lake()
        trained = version_lineage(the_lake, mlflow.tracking_uri, ref.name, ref.version).interaction_ids
        report = drift.measure(the_lake, task, ref.version, trained)
        if report is None:
            return dg.SkipReason(f"no interactions of {task.name} in the lake yet")
        decision = drift.decide(report, spec)
        asked = decision
        if decision.fire:  # only then: counting the eligible rows runs the curation policy
            eligible, seen = eligible_counts(context.instance, lake, task, ref)
            asked = drift.with_new_data(decision, eligible - seen)
        result = request_training(context, task, TRIGGER, asked)
        outcome = (f"requested {result.run_key}" if isinstance(result, dg.RunRequest)
                   else result.skip_message or "skipped")
        drift.record(the_lake, task, report, decision, outcome)
        context.log.info(asked.reason)
        return result

    return _drift
