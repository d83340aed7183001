"""The right to be forgotten: every table, every Parquet file, the landing folder and its archive, the local
dataset copies; the receipt; the MLflow tags; a crash in the middle; a concurrent ingest; upkeep; retention."""

from __future__ import annotations

import gzip
import json
import os
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from continuum_pipeline.capture.landing import ARCHIVE_DIR
from continuum_pipeline.judge.verifier import ProgrammaticVerifier
from continuum_pipeline.lake.ingest import ingest_landing
from continuum_pipeline.privacy import forget as fg
from continuum_pipeline.privacy.tombstones import TOMBSTONES_TABLE, load_tombstones, subject_hash

from .conftest import feedback, interaction, label_task, run_task_sql, task_config, write_segment

ALICE = "alice-7f3c"  # the subject; her prompts carry the marker too, so any copy of her text is found
OTHERS = ("bob-1", "carol-2")
GOLDEN_VERSION = "gold-v1"


def _user(i: int) -> str:
    return ALICE if i % 3 == 1 else OTHERS[i % 2]


def _record(i: int, day: datetime | None = None) -> dict:
    user = _user(i)
    text = f"question {i} from {user} about a refund"
    extra = {"ts": day.strftime("%Y-%m-%dT%H:%M:%S.%fZ")} if day else {}
    return interaction(i, user_id=user, session_id=f"s-{user}-{i % 2}", prompt=text,
                       messages=[{"role": "user", "content": text}], response=f"answer {i} for {user}", **extra)


def _alice_ids(n: int) -> set[str]:
    return {f"i{i:06d}" for i in range(1, n + 1) if _user(i) == ALICE}


def _register(tracking_uri: str, name: str, tags: dict[str, str], champion: bool = False) -> str:
    """A registered version with lineage tags as registry/models.py writes them (no model needed to test tags)."""
    from continuum_pipeline.registry.models import client

    c = client(tracking_uri)
    if not c.search_registered_models(f"name = '{name}'"):
        c.create_registered_model(name)
    mv = c.create_model_version(name, source=(Path(tracking_uri.removeprefix("sqlite:///")).parent / "m").as_uri(), tags={f"continuum.{k}": v for k, v in tags.items()})
    if champion:
        c.set_registered_model_alias(name, "champion", mv.version)
    return str(mv.version)


def build_world(settings, lake) -> dict:
    """Ingested traffic of three users with feedback and two quarantined lines of Alice, the shared and task SQL
    models, reward labels, a dataset and a production golden set, a training run's JSONL copy, two registered
    versions (one trained on Alice's data), and a landing segment not ingested yet."""
    task = task_config()
    write_segment(settings.landing_dir, "20261120T000000Z-a", [
        *[_record(i) for i in range(1, 13)],
        *[feedback(i, f"i{i:06d}", score=1.0) for i in range(1, 7)],
        feedback(7, "i000002", score=0.0, user_id=ALICE),  # Alice rating Bob's answer
        b'{"v": 1, "kind": "interaction", "interaction_id": "bad1", "user_id": "alice-7f3c", "ts": "yesterday"}',
        b"not json at all, but it names alice-7f3c",
    ])
    report = ingest_landing(lake, settings.landing_dir)
    assert report.rows("quarantine") == 2
    label_task(lake, task, [ProgrammaticVerifier(lambda item: (1.0, "fine"), name="kb")])
    run_task_sql(lake, task)
    candidates = lake.read_arrow(task.table("sft_candidates")).sort_by("interaction_id")
    dataset = candidates.select(["interaction_id", "messages"]).append_column(
        "split", pa.array(["train"] * candidates.num_rows))
    with_alice = lake.replace_table(task.table("sft_dataset"), dataset)
    without_alice = lake.replace_table(task.table("sft_dataset"), dataset.filter(
        pa.compute.invert(pa.compute.is_in(dataset["interaction_id"], pa.array(sorted(_alice_ids(12)))))))
    from continuum_pipeline.curation.embeddings import text_hash, user_turn

    texts = {text_hash(user_turn(m)) for m in candidates["messages"].to_pylist()}  # the embeddings cache's keys
    lake.replace_table(task.table("embeddings"), pa.table({
        "text_hash": sorted(texts), "embedder": ["test@1"] * len(texts),
        "vector": pa.array([[0.5, 0.5]] * len(texts), pa.list_(pa.float32()))}))
    golden = candidates.select(["interaction_id", "messages"]).slice(0, 4)  # holds i000001 (Alice) and i000004
    lake.replace_table(task.table("golden__prod"), golden, {"continuum.golden-version": GOLDEN_VERSION})
    run_dir = settings.home / "tasks" / task.name / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "train.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in dataset["messages"].to_pylist()))
    model = task.registered_model_name
    v1 = _register(settings.mlflow_uri, model, {"task": task.name, "dataset_snapshot_id": str(with_alice),
                                                "golden_set_versions": json.dumps({"prod": GOLDEN_VERSION})},
                   champion=True)
    v2 = _register(settings.mlflow_uri, model, {"task": task.name, "dataset_snapshot_id": str(without_alice)})
    write_segment(settings.landing_dir, "20261120T010000Z-b", [_record(i) for i in range(13, 17)])
    return {"task": task, "model": model, "v1": v1, "v2": v2}


def _tables(lake) -> list[str]:
    return sorted(ident[-1] for ident in lake.catalog.list_tables(lake.namespace))


def _holds_alice(values) -> bool:
    text = json.dumps(values, default=lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
    return ALICE in text or any(f'"{i}"' in text for i in _alice_ids(16))


def _others(lake) -> dict[str, int]:
    rows = lake.read_arrow("interactions").to_pylist()
    return {u: sum(r["user_id"] == u for r in rows) for u in OTHERS}


def full_scan(settings, lake) -> dict[str, list[str]]:
    """Where Alice still is: catalog tables (rows and manifest column bounds), every Parquet file under the warehouse (read with pyarrow,
    not through the catalog), every file under landing (archive, failed, .tmp too) and the training copies."""
    found: dict[str, list[str]] = {"catalog": [], "parquet": [], "landing": [], "local": []}
    for name in _tables(lake):
        if name not in fg.PRIVACY_TABLES and _holds_alice(lake.read_arrow(name).to_pylist()):
            found["catalog"].append(name)
        table = lake.table(name)  # manifests keep min/max column values of every file they list, deleted ones too
        for snapshot in table.snapshots():
            for manifest in snapshot.manifests(table.io):
                for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False):
                    if ALICE.encode() in b"".join((entry.data_file.lower_bounds or {}).values()) + b"".join(
                            (entry.data_file.upper_bounds or {}).values()):
                        found["catalog"].append(f"{name}: manifest bounds")
    warehouse = Path(settings.warehouse.removeprefix("file://"))
    for path in warehouse.rglob("*.parquet"):
        if _holds_alice(pq.read_table(path).to_pylist()):
            found["parquet"].append(str(path.relative_to(warehouse)))
    for path in settings.landing_dir.rglob("*"):
        if path.is_file():
            data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
            if ALICE.encode() in data or any(f'"{i}"'.encode() in data for i in _alice_ids(16)):
                found["landing"].append(str(path.relative_to(settings.landing_dir)))
    for path in (settings.home / "tasks").rglob("*.jsonl"):
        if ALICE in path.read_text():
            found["local"].append(str(path))
    return found


def _forget(settings, lake, progress=None, **ids) -> fg.Receipt:
    fg.submit(settings.home, **ids, requested_by="dpo@example.org")
    [receipt] = fg.finish_pending(lake, settings.home, settings.landing_dir, settings.mlflow_uri, progress)
    return receipt


def test_forget_removes_the_user_everywhere_physically_and_keeps_everyone_else(settings, lake):
    world = build_world(settings, lake)
    before = full_scan(settings, lake)
    assert before["catalog"] and before["parquet"] and before["landing"] and before["local"]  # the scan sees her
    others = _others(lake)
    feedback_before = lake.read_arrow("feedback_events").num_rows

    receipt = _forget(settings, lake, users=[ALICE])

    assert full_scan(settings, lake) == {"catalog": [], "parquet": [], "landing": [], "local": []}
    assert _others(lake) == others
    tables = receipt.tables
    assert tables["interactions"]["rows_removed"] == 4  # i1, i4, i7, i10
    # her interactions' feedback (i1, i4) and her own rating of Bob's answer; Bob's other feedback stays
    assert tables["feedback_events"]["rows_removed"] == 3
    assert lake.read_arrow("feedback_events").num_rows == feedback_before - 3
    assert tables["quarantine"]["rows_removed"] == 2
    assert tables[world["task"].table("sft_dataset")]["rows_removed"] == 0  # the current dataset had none of hers
    assert tables[world["task"].table("golden__prod")]["rows_removed"] == 2
    assert tables[world["task"].table("reward_labels")]["rows_removed"] == 4
    assert {"stg_interactions", world["task"].table("sft_candidates")} <= set(tables)
    assert tables[world["task"].table("embeddings")]["rows_removed"] == 4  # her texts' cached vectors
    assert lake.read_arrow(world["task"].table("embeddings")).num_rows == 8  # everyone else's stay
    physical = json.loads(receipt.row["physical"])
    for name, t in tables.items():
        table = lake.table(name)
        assert t["snapshot_after"] == table.current_snapshot().snapshot_id
        if t["rows_removed"] or name == world["task"].table("sft_dataset"):  # its older snapshot held her rows
            assert len(table.snapshots()) == 1 and physical[name]["snapshots_expired"] >= 1  # no time travel back
    assert physical[world["task"].table("sft_dataset")]["files_deleted"] >= 1
    assert json.loads(receipt.row["landing"]) == {"landing": {"segments_rewritten": 1, "lines_removed": 2},
                                                  "landing/archive": {"segments_rewritten": 1, "lines_removed": 9}}
    assert list(json.loads(receipt.row["local_files"]).values()) == [4]
    # the receipt: hashed subject only, no raw id anywhere in the row; the pending file is gone
    assert json.loads(receipt.row["subjects"]) == [{"kind": "user", "subject_hash": subject_hash("user", ALICE)}]
    [row] = lake.read_arrow(fg.RECEIPTS_TABLE).to_pylist()
    assert ALICE not in json.dumps(row, default=str) and not any(i in json.dumps(row, default=str) for i in _alice_ids(16))
    assert row["requested_by"] == "dpo@example.org" and row["rows_removed"] == receipt.rows_removed
    assert not list(fg.pending_dir(settings.home).glob("*"))
    # the tombstones: hashes only
    tombstones = lake.read_arrow(TOMBSTONES_TABLE).to_pylist()
    assert ALICE not in json.dumps(tombstones, default=str)
    assert {t["kind"] for t in tombstones} == {"user", "interaction"}


def test_model_versions_trained_on_the_data_are_tagged_and_listed(settings, lake):
    from continuum_pipeline.registry.models import get_version

    world = build_world(settings, lake)
    receipt = _forget(settings, lake, users=[ALICE])

    [affected] = receipt.affected  # v2's dataset snapshot had none of her rows
    assert (affected["model"], affected["version"]) == (world["model"], world["v1"])
    assert affected["via"] == {"dataset": 4, "golden:prod": 2}
    assert receipt.champions_affected == [world["model"]]
    v1 = get_version(settings.mlflow_uri, world["model"], world["v1"])
    assert v1.tags[fg.TRAINED_ON_DELETED] == "true" and v1.tags[fg.RECEIPT_TAG] == receipt.receipt_id
    assert fg.TRAINED_ON_DELETED not in get_version(settings.mlflow_uri, world["model"], world["v2"]).tags


def test_a_crash_after_the_first_delete_and_a_rerun_finish_the_job(settings, lake):
    build_world(settings, lake)
    others = _others(lake)

    def crash(event: str, info: dict) -> None:
        if event.startswith("deleted:"):
            raise RuntimeError(f"injected crash after {event}")

    request = fg.submit(settings.home, users=[ALICE])
    with pytest.raises(RuntimeError, match="injected crash after deleted:"):
        fg.run_forget(lake, request, home=settings.home, landing=settings.landing_dir,
                      tracking_uri=settings.mlflow_uri, progress=crash)
    path = fg.pending_dir(settings.home) / f"{request.receipt_id}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # holds the raw id until done
    assert full_scan(settings, lake)["catalog"]  # half done

    [receipt] = fg.finish_pending(lake, settings.home, settings.landing_dir, settings.mlflow_uri)
    assert receipt.receipt_id == request.receipt_id
    assert full_scan(settings, lake) == {"catalog": [], "parquet": [], "landing": [], "local": []}
    assert _others(lake) == others
    assert receipt.tables["interactions"]["rows_removed"] == 4  # counted once across the crash and the rerun
    assert len(receipt.affected) == 1  # computed before the crash's delete, kept in the pending file
    assert lake.read_arrow(fg.RECEIPTS_TABLE).num_rows == 1 and not path.exists()


def test_tombstones_drop_a_replayed_segment_and_upkeep_does_not_resurrect(settings, lake):
    from continuum_pipeline.lake.maintenance import MaintenancePolicy, maintain

    build_world(settings, lake)
    _forget(settings, lake, users=[ALICE])
    # her old rows arrive again (a replayed export), next to a new user's; and a call she makes after the forget
    later = datetime.now(UTC) + timedelta(minutes=5)
    write_segment(settings.landing_dir, "20261120T020000Z-replay", [
        *[_record(i) for i in (1, 4, 7)], feedback(20, "i000004", score=0.0),
        interaction(50, user_id="dave-3"), _record(100, day=later)])
    report = ingest_landing(lake, settings.landing_dir)
    assert report.commits["interactions"].forgotten_rows == 3
    assert report.commits["feedback_events"].forgotten_rows == 1
    ids = set(lake.read_arrow("interactions")["interaction_id"].to_pylist())
    assert {"i000050", "i000100"} <= ids and not ids & {"i000001", "i000004", "i000007"}
    archived = (settings.landing_dir / ARCHIVE_DIR / "20261120T020000Z-replay.jsonl").read_text()
    assert '"i000050"' in archived and '"i000001"' not in archived  # the archive copy holds no forgotten line
    # a call of hers from before the forget that forget never saw, then its feedback in a later segment
    write_segment(settings.landing_dir, "20261120T020001Z-late", [_record(301)])
    assert ingest_landing(lake, settings.landing_dir).commits["interactions"].forgotten_rows == 1
    write_segment(settings.landing_dir, "20261120T020002Z-late-feedback", [feedback(30, "i000301", comment="meh")])
    assert ingest_landing(lake, settings.landing_dir).commits["feedback_events"].forgotten_rows == 1

    for _ in range(5):  # many small files: compaction rewrites partitions
        write_segment(settings.landing_dir, f"20261120T03000{_}Z-more", [interaction(200 + _, user_id="erin-4")])
        ingest_landing(lake, settings.landing_dir)
    maintain(lake, ["interactions", "feedback_events", "quarantine"],
             MaintenancePolicy(snapshot_retention=timedelta(0), retain_last=1, compact_min_files=2,
                               orphan_min_age=timedelta(0)))
    rows = lake.read_arrow("interactions").to_pylist()
    assert not {r["interaction_id"] for r in rows} & _alice_ids(12)
    assert [r["interaction_id"] for r in rows if r["user_id"] == ALICE] == ["i000100"]  # only the later call


def test_a_concurrent_ingest_neither_resurrects_her_rows_nor_loses_others(settings, lake):
    """An ingest of a segment with her old rows and others' new rows runs while forget is between its steps: once
    after the tombstones (its commit must drop her rows) and once racing the deletes (commits conflict and retry)."""
    build_world(settings, lake)
    others = _others(lake)
    write_segment(settings.landing_dir, "20261120T040000Z-c", [*[_record(i) for i in (1, 10)],
                                                               interaction(60, user_id="frank-5")])
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []

    def ingest() -> None:
        try:
            ingest_landing(lake, settings.landing_dir)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def hook(event: str, info: dict) -> None:
        if event == "tombstoned_subjects":  # ingest everything waiting before forget resolves her ids
            t = threading.Thread(target=ingest)
            t.start()
            t.join()
        if event == "fenced":  # one more racing the deletes
            write_segment(settings.landing_dir, "20261120T050000Z-d", [_record(4), interaction(61, user_id="gina-6")])
            t = threading.Thread(target=ingest)
            threads.append(t)
            t.start()

    _forget(settings, lake, progress=hook, users=[ALICE])
    for t in threads:
        t.join()
    assert not errors
    ingest_landing(lake, settings.landing_dir)  # whatever the racing run left
    ids = set(lake.read_arrow("interactions")["interaction_id"].to_pylist())
    assert {"i000060", "i000061", "i000014", "i000015"} <= ids  # everyone else's rows: none lost
    assert _others(lake)["bob-1"] >= others["bob-1"]
    assert full_scan(settings, lake) == {"catalog": [], "parquet": [], "landing": [], "local": []}


def test_an_ingest_that_prepared_its_commit_before_the_tombstones_cannot_bring_her_back(settings, lake):
    """The worst interleaving, forced: an ingest has read the table and the (empty) tombstones and written its data
    files, holding her old row, when forget starts. Forget's fence makes that commit fail; the retry re-reads the
    tombstones and drops her row; the first attempt's files (an orphan holding her row) are deleted."""
    build_world(settings, lake)
    write_segment(settings.landing_dir, "20261120T070000Z-e", [_record(7), interaction(80, user_id="ivan-8")])
    prepared, release = threading.Event(), threading.Event()
    events: list[str] = []
    reports: list = []

    def paused(event: str, info: dict) -> None:
        events.append(event)
        if event == "data_files_written:interactions" and not prepared.is_set():
            prepared.set()
            assert release.wait(120)

    def ingest() -> None:
        reports.append(ingest_landing(lake, settings.landing_dir, progress=paused))

    thread = threading.Thread(target=ingest)
    thread.start()
    assert prepared.wait(120)
    _forget(settings, lake, progress=lambda event, info: release.set() if event == "fenced" else None, users=[ALICE])
    thread.join(120)

    [report] = reports
    assert events.count("data_files_written:interactions") >= 2  # the prepared commit failed and was redone
    assert report.commits["interactions"].forgotten_rows >= 1
    ids = set(lake.read_arrow("interactions")["interaction_id"].to_pylist())
    assert "i000080" in ids and not ids & _alice_ids(16)
    assert full_scan(settings, lake) == {"catalog": [], "parquet": [], "landing": [], "local": []}


def test_retention_forgets_only_the_tasks_old_interactions(settings, lake):
    from continuum_pipeline.privacy.retention import apply_retention

    now = datetime(2026, 11, 22, tzinfo=UTC)
    old, recent = now - timedelta(days=40), now - timedelta(days=2)
    write_segment(settings.landing_dir, "20261120T000000Z-r", [
        interaction(1, ts=old.isoformat()), interaction(2, ts=old.isoformat(), task="other_task"),
        interaction(3, ts=recent.isoformat()), feedback(1, "i000001"), feedback(2, "i000003")])
    ingest_landing(lake, settings.landing_dir)
    task = task_config(privacy={"retention_days": 30})

    result = apply_retention(lake, task, home=settings.home, landing=settings.landing_dir,
                             tracking_uri=settings.mlflow_uri, now=now)

    assert result.interactions == 1
    assert sorted(lake.read_arrow("interactions")["interaction_id"].to_pylist()) == ["i000002", "i000003"]
    assert lake.read_arrow("feedback_events")["interaction_id"].to_pylist() == ["i000003"]
    row = result.receipt.row
    assert row["reason"] == "retention" and row["task"] == task.name
    assert json.loads(row["subjects"])["interactions"] == 1
    archived = (settings.landing_dir / ARCHIVE_DIR / "20261120T000000Z-r.jsonl").read_text()
    assert '"i000001"' not in archived and '"i000002"' in archived
    again = apply_retention(lake, task, home=settings.home, landing=settings.landing_dir, now=now)
    assert again.interactions == 0 and again.receipt is None


def test_bad_requests_name_the_field_and_the_fix(settings):
    with pytest.raises(fg.ForgetRequestError, match="at least one --user"):
        fg.submit(settings.home)
    with pytest.raises(fg.ForgetRequestError, match="users: .* non-empty string"):
        fg.submit(settings.home, users=[""])


def test_archive_copies_are_redacted(settings, lake):
    email = "jane.doe@example.com"
    write_segment(settings.landing_dir, "20261120T000000Z-pii", [
        interaction(1, prompt=f"mail me at {email}", messages=[{"role": "user", "content": f"mail me at {email}"}]),
        b"broken line with " + email.encode()])
    ingest_landing(lake, settings.landing_dir)
    archived = (settings.landing_dir / ARCHIVE_DIR / "20261120T000000Z-pii.jsonl").read_text()
    assert email not in archived and archived.count("<EMAIL>") >= 2
    assert not (settings.landing_dir / "20261120T000000Z-pii.jsonl").exists()


def test_clean_segments_are_archived_as_they_are_and_a_replay_is_scrubbed_even_on_a_rerun(settings, lake):
    # Nothing to redact, nobody forgotten: the archive copy is the segment itself (moved, not rewritten).
    write_segment(settings.landing_dir, "20261120T000000Z-clean", [interaction(1), interaction(2)])
    before = (settings.landing_dir / "20261120T000000Z-clean.jsonl").read_bytes()
    ingest_landing(lake, settings.landing_dir)
    assert (settings.landing_dir / ARCHIVE_DIR / "20261120T000000Z-clean.jsonl").read_bytes() == before
    # A replay of a forgotten subject's line whose rows an earlier run committed (crash before archiving): the rerun
    # commits nothing, yet its archive copy still leaves the forgotten line out.
    fg.submit(settings.home, interactions=["i000001"], requested_by="dpo@example.org")
    fg.finish_pending(lake, settings.home, settings.landing_dir, settings.mlflow_uri)
    write_segment(settings.landing_dir, "20261120T010000Z-replay", [interaction(1), interaction(3)])
    with pytest.raises(RuntimeError, match="crash"):
        ingest_landing(lake, settings.landing_dir, progress=_crash_on("committed:quarantine"))  # not archived
    ingest_landing(lake, settings.landing_dir)
    archived = (settings.landing_dir / ARCHIVE_DIR / "20261120T010000Z-replay.jsonl").read_text()
    assert '"i000003"' in archived and '"i000001"' not in archived


def _crash_on(event: str):
    def progress(name: str, info: dict) -> None:
        if name == event:
            raise RuntimeError(f"crash at {event}")
    return progress


def test_forget_job_with_run_config_and_the_retrain_sensor(settings, lake):
    import dagster as dg

    from continuum_pipeline.defs.flywheel import build_task_definitions
    from continuum_pipeline.defs.privacy import forget_job, retrain_on_forget_sensor
    from continuum_pipeline.defs.resources import resources_from_settings

    world = build_world(settings, lake)
    resources = resources_from_settings(settings)
    with dg.instance_for_test() as instance:
        result = forget_job.execute_in_process(
            instance=instance, resources=resources,
            run_config={"ops": {"forget": {"config": {"users": [ALICE], "requested_by": "ui"}}}})
        assert result.success
        [event] = [e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]
        receipt_id = event.event_specific_data.materialization.metadata["receipt_id"].value
        assert full_scan(settings, lake)["parquet"] == []

        task = world["task"].model_copy(update={"privacy": world["task"].privacy.model_copy(
            update={"retrain_on_forget": True})})
        defs = build_task_definitions(task)
        training_job = next(j for j in defs.jobs if j.name == f"{task.name}_training_job")
        sensor = retrain_on_forget_sensor(task, training_job)
        context = dg.build_sensor_context(instance=instance, resources={"lake": resources["lake"]})
        request = sensor(context)  # one training for every receipt that touched the champion
        assert request.run_key == f"{task.name}:forget:deletion:{receipt_id}"
        assert "touched the champion" in request.tags["continuum/reason"]
        again = sensor(dg.build_sensor_context(instance=instance, resources={"lake": resources["lake"]},
                                               cursor=context.cursor))
        assert isinstance(again, dg.SkipReason)  # once per receipt
        off = retrain_on_forget_sensor(world["task"], training_job)
        assert isinstance(off(dg.build_sensor_context(instance=instance, resources={"lake": resources["lake"]})),
                          dg.SkipReason)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs POSIX signals")
def test_cli_forget_killed_mid_way_and_resumed(settings, lake):
    import signal
    import subprocess
    import sys

    build_world(settings, lake)
    env = {**os.environ}
    # SIGKILL the CLI right after its first table delete (no cleanup, no finally: a real crash)
    code = ("import os, signal, sys\n"
            "from continuum_pipeline.privacy import forget as fg\n"
            "orig = fg.delete_from_table\n"
            "def killing(*a, **k):\n"
            "    out = orig(*a, **k)\n"
            "    if out[0]:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "    return out\n"
            "fg.delete_from_table = killing\n"
            "from continuum_pipeline.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    killed = subprocess.run([sys.executable, "-c", code, "forget", "--user", ALICE], env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len(fg.pending(settings.home)) == 1
    done = subprocess.run([sys.executable, "-m", "continuum_pipeline.cli", "forget", "--resume"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "deletion receipt" in done.stdout and "continuum-support-answer@1" in done.stdout
    assert ALICE not in done.stdout
    assert full_scan(settings, lake) == {"catalog": [], "parquet": [], "landing": [], "local": []}
    assert not fg.pending(settings.home)
    assert load_tombstones(lake).cutoff("user", ALICE) is not None


def test_privacy_upkeep_job_finishes_an_interrupted_forget(settings, lake):
    import dagster as dg

    from continuum_pipeline.defs.ingest.assets import ingest_landing_segments
    from continuum_pipeline.defs.privacy import privacy_upkeep_job
    from continuum_pipeline.defs.resources import resources_from_settings

    build_world(settings, lake)

    def crash(event: str, info: dict) -> None:
        if event == "landing":
            raise RuntimeError("injected crash")

    request = fg.submit(settings.home, users=[ALICE])
    with pytest.raises(RuntimeError, match="injected crash"):
        fg.run_forget(lake, request, home=settings.home, landing=settings.landing_dir,
                      tracking_uri=settings.mlflow_uri, progress=crash)
    resources = resources_from_settings(settings)
    with dg.instance_for_test() as instance:
        assert privacy_upkeep_job.execute_in_process(instance=instance, resources=resources).success
        assert not fg.pending(settings.home)
        assert full_scan(settings, lake) == {"catalog": [], "parquet": [], "landing": [], "local": []}
        # her old rows dropped into landing again: the ingest asset says it dropped them, not quarantined them
        write_segment(settings.landing_dir, "20261120T060000Z-again", [_record(1), interaction(70, user_id="hal-7")])
        result = dg.materialize([ingest_landing_segments], instance=instance, resources=resources)
        [meta] = [m.metadata for m in result.asset_materializations_for_node("ingest_landing_segments")
                  if m.asset_key == dg.AssetKey("interactions")]
        # i1 dropped; appended: hal and the waiting segment's Bob and Carol (its Alice lines were scrubbed)
        assert meta["rows_forgotten"].value == 1 and meta["rows_appended"].value == 3


def test_forget_by_session_and_by_interaction_removes_only_those(settings, lake):
    write_segment(settings.landing_dir, "20261120T000000Z-s", [
        interaction(1, session_id="s-a", user_id="u1"), interaction(2, session_id="s-a", user_id="u1"),
        interaction(3, session_id="s-b", user_id="u1"), interaction(4, session_id="s-c", user_id="u2"),
        feedback(1, "i000002"), feedback(2, "i000004"), feedback(3, "i000003")])
    ingest_landing(lake, settings.landing_dir)
    unrelated = "other__sft_dataset"  # never held the subject: its time travel (model lineage) must stay
    for ids in (["x1"], ["x1", "x2"]):
        lake.replace_table(unrelated, pa.table({"interaction_id": ids}))
    history = len(lake.table(unrelated).snapshots())

    receipt = _forget(settings, lake, sessions=["s-a"], interactions=["i000004"])

    assert len(lake.table(unrelated).snapshots()) == history + 1  # + the fence, nothing expired

    assert sorted(lake.read_arrow("interactions")["interaction_id"].to_pylist()) == ["i000003"]
    assert lake.read_arrow("feedback_events")["interaction_id"].to_pylist() == ["i000003"]
    assert receipt.tables["interactions"]["rows_removed"] == 3 and receipt.tables["feedback_events"]["rows_removed"] == 2
    assert sorted(s["kind"] for s in json.loads(receipt.row["subjects"])) == ["interaction", "session"]
    archived = (settings.landing_dir / ARCHIVE_DIR / "20261120T000000Z-s.jsonl").read_text()
    assert '"i000003"' in archived and not any(f'"i00000{i}"' in archived for i in (1, 2, 4))


def test_rows_a_stale_writer_brings_back_are_swept_by_the_upkeep(settings, lake):
    """A SQL model or dataset run that read the lake before the deletion commits after it: the privacy upkeep's
    sweep finds the rows by their tombstones and forgets them again, physically."""
    world = build_world(settings, lake)
    table = world["task"].table("sft_candidates")
    stale = lake.read_arrow(table)
    _forget(settings, lake, users=[ALICE])
    lake.replace_table(table, stale)  # the stale run commits
    assert full_scan(settings, lake)["catalog"] == [table]

    receipt = fg.sweep_tombstones(lake, settings.home, settings.landing_dir, settings.mlflow_uri)

    assert receipt is not None and receipt.row["reason"] == "sweep"
    assert receipt.tables[table]["rows_removed"] == 4
    assert full_scan(settings, lake) == {"catalog": [], "parquet": [], "landing": [], "local": []}
    assert fg.sweep_tombstones(lake, settings.home, settings.landing_dir) is None  # nothing left to find
