"""Landing sensor: request an ingest run when complete segments wait in the landing folder."""

import hashlib
import json

import dagster as dg

from continuum_pipeline.capture.landing import list_ignored, list_segments
from continuum_pipeline.defs.ingest.assets import ingest_job
from continuum_pipeline.defs.resources import LandingResource


@dg.sensor(job=ingest_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Requests an ingest run for each new batch of complete landing segments.")
def landing_sensor(context: dg.SensorEvaluationContext, landing: LandingResource):
    waiting = list_segments(landing.path)
    # Cursor: segments already requested and still in landing (archived ones drop out, so it stays small).
    requested = set(json.loads(context.cursor)["requested"]) if context.cursor else set()
    requested &= set(waiting)
    new = [s for s in waiting if s not in requested][: landing.max_segments]
    if not new:
        context.update_cursor(json.dumps({"requested": sorted(requested)}))
        ignored = list_ignored(landing.path)  # never silently: a misnamed export would wait unseen forever
        note = f"; ignored (not *.jsonl / *.jsonl.gz): {', '.join(ignored[:5])}" if ignored else ""
        return dg.SkipReason(f"no new segments in {landing.path} ({len(waiting)} waiting, all already requested)"
                             + note)
    requested |= set(new)
    context.update_cursor(json.dumps({"requested": sorted(requested)}))
    run_key = "landing-" + hashlib.sha256("\n".join(new).encode()).hexdigest()[:16]
    return dg.RunRequest(run_key=run_key, tags={"continuum/segments": str(len(new)), "continuum/first-segment": new[0]})
