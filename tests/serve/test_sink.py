"""The prediction log: batched files off the request path, bounded, never failing a request."""

from __future__ import annotations

import errno
import gc
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest

from serve import sink as sink_module
from serve.schema import CategoricalFeature, NumericFeature, ServingSchema, WireBatch, api_models
from serve.sink import Counters, LogEntry, PredictionSink, SinkConfig
from stages.contract.prediction_log import open_destination, read_logged
from tests.stages.test_ingest import s3_endpoint  # noqa: F401 (a real moto S3 server)

SCHEMA = ServingSchema(
    entity_key="customer_id",
    time="snapshot_date",
    label="churn",
    numeric=(NumericFeature("tenure", 0.0, 10.0, 0.0, 20.0),),
    categorical=(CategoricalFeature("plan", ("basic", "premium")),),
)
META = {
    "model_name": "logreg",
    "model_version": "v1",
    "data_version": "d1.dir",
    "git_commit": "abc123",
    "shadow_model_version": "v2",
}


def entry(
    keys: list, *, shadow: bool = True, at: float | None = None, authenticated: bool = False
) -> LogEntry:
    n = len(keys)
    wire = WireBatch(
        keys=keys,
        numeric=np.array([[float(i)] for i in range(n)]),
        categorical=[tuple("basic" if i % 2 else None for i in range(n))],
        received=time.time(),
    )
    scores = np.linspace(0.1, 0.9, n)
    return LogEntry(
        request_id=uuid.uuid4().hex,
        time=time.time() if at is None else at,
        latency_ms=1.5,
        wire=wire,
        scores=scores,
        decisions=scores >= 0.5,
        shadow_scores=scores / 2 if shadow else None,
        authenticated=authenticated,
    )


def config(path: str, **overrides) -> SinkConfig:
    base = {"format": "parquet", "max_queued": 1000, "flush_records": 1000, "flush_seconds": 60.0}
    return SinkConfig(path=path, **{**base, **overrides})


def read_log(path: Path) -> list[dict]:
    return ds.dataset(path, format="parquet", partitioning="hive").to_table().to_pylist()


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_records_carry_versions_features_scores_and_shadow(tmp_path: Path) -> None:
    counters = Counters()
    sink = PredictionSink(config(str(tmp_path)), SCHEMA, META, counters).start()
    first, second = entry([1, "c-2", 3]), entry([4], shadow=False, authenticated=True)
    assert sink.submit(first) and sink.submit(second)
    sink.close()
    files = sorted(tmp_path.rglob("*.parquet"))
    assert len(files) == 1 and files[0].parent.name.startswith("date=")
    rows = read_log(tmp_path)
    assert [r["customer_id"] for r in rows] == ["1", "c-2", "3", "4"]
    assert [r["row"] for r in rows] == [0, 1, 2, 0]
    assert {r["request_id"] for r in rows[:3]} == {first.request_id}
    for row in rows:
        assert {k: row[k] for k in META} == META
        assert row["latency_ms"] == 1.5
    assert rows[0]["features"] == {"tenure": 0.0, "plan": None}
    assert rows[1]["features"] == {"tenure": 1.0, "plan": "basic"}
    assert [r["score"] for r in rows] == pytest.approx([0.1, 0.5, 0.9, 0.1])
    assert [r["decision"] for r in rows] == [False, True, True, False]
    assert [r["shadow_score"] for r in rows[:3]] == pytest.approx([0.05, 0.25, 0.45])
    assert rows[3]["shadow_score"] is None  # no shadow score for that request
    assert [r["authenticated"] for r in rows] == [False, False, False, True]
    assert counters.snapshot() == {
        "logged": 4,
        "written": 4,
        "dropped": 0,
        "failed": 0,
        "files": 1,
        "shadow_errors": 0,
    }


def test_jsonl_lines_are_json_with_null_for_missing(tmp_path: Path) -> None:
    sink = PredictionSink(config(str(tmp_path), format="jsonl"), SCHEMA, META, Counters()).start()
    sink.submit(entry([7, 8], at=1_780_000_000.25))
    sink.close()
    (path,) = tmp_path.rglob("*.jsonl")
    assert path.parent.name == "date=2026-05-28"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["time"] == "2026-05-28T20:26:40.250000+00:00"
    assert lines[0]["features"] == {"tenure": 0.0, "plan": None}
    assert [line["customer_id"] for line in lines] == ["7", "8"]
    assert lines[1]["model_version"] == "v1" and lines[1]["shadow_score"] == pytest.approx(0.45)
    assert lines[0]["authenticated"] is False  # the same columns as the Parquet files
    parquet = tmp_path / "parquet"
    other = PredictionSink(config(str(parquet)), SCHEMA, META, Counters()).start()
    other.submit(entry([7, 8], at=1_780_000_000.25))
    other.close()
    [file] = parquet.rglob("*.parquet")
    assert list(lines[0]) == ds.dataset(file, format="parquet").schema.names


def test_a_file_is_written_when_enough_records_wait_or_the_oldest_is_old(tmp_path: Path) -> None:
    by_count, by_age = tmp_path / "count", tmp_path / "age"
    counted = PredictionSink(config(str(by_count), flush_records=3), SCHEMA, META, Counters())
    aged = PredictionSink(config(str(by_age), flush_seconds=0.3), SCHEMA, META, Counters())
    counted.start(), aged.start()
    try:
        counted.submit(entry([1, 2]))
        aged.submit(entry([1]))
        time.sleep(0.1)
        assert not list(by_count.rglob("*.parquet"))  # 2 < 3 records wait
        counted.submit(entry([3]))
        wait_for(lambda: len(list(by_count.rglob("*.parquet"))) == 1)
        wait_for(lambda: len(list(by_age.rglob("*.parquet"))) == 1)  # after 0.3 s
        counted.submit(entry([4]))
    finally:
        counted.close(), aged.close()
    assert len(read_log(by_count)) == 4  # the last record was written at close
    assert len(list(by_count.rglob("*.parquet"))) == 2


def test_a_failing_sink_counts_lost_records_and_never_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    counters = Counters()
    sink = PredictionSink(config(str(blocker / "logs"), flush_records=1), SCHEMA, META, counters)
    sink.start()
    assert sink.submit(entry([1, 2]))  # accepted: the failure happens later, off the caller
    wait_for(lambda: counters.snapshot()["failed"] == 2)
    assert sink.submit(entry([3]))  # and the sink keeps accepting
    sink.close()
    assert counters.snapshot() == {
        "logged": 3,
        "written": 0,
        "dropped": 0,
        "failed": 3,
        "files": 0,
        "shadow_errors": 0,
    }
    last = counters.last_error()
    assert last["last_error"].startswith(f"1 records lost writing to {blocker / 'logs'}: ")
    at = datetime.fromisoformat(last["last_error_at"])
    assert abs((datetime.now(UTC) - at).total_seconds()) < 60


class FullDisk:
    """A local filesystem whose disk is full: a file opens (and exists, empty), writing to
    it fails with ENOSPC."""

    def __init__(self) -> None:
        self.fs = pafs.LocalFileSystem()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)

    def open_output_stream(self, path: str) -> FullStream:
        return FullStream(self.fs.open_output_stream(path))


class FullStream:
    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def __enter__(self) -> FullStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.close()

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_leaves_no_file_and_is_reported_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    logs = tmp_path / "logs"
    monkeypatch.setattr(sink_module, "open_destination", lambda path: (FullDisk(), path, True))
    counters = Counters()
    sink = PredictionSink(config(str(logs), flush_records=1), SCHEMA, META, counters).start()
    with caplog.at_level(logging.WARNING, logger="evergreen.serve"):
        sink.submit(entry([1, 2]))
        wait_for(lambda: counters.snapshot()["failed"] == 2)
        sink.submit(entry([3]))
        sink.close()
    assert counters.snapshot()["failed"] == 3 and counters.snapshot()["written"] == 0
    # no zero-byte temporary file (nor any other) is left in the log folder
    assert [p for p in logs.rglob("*") if p.is_file()] == []
    assert "No space left on device" in counters.last_error()["last_error"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "evergreen.serve"]
    assert len(warnings) == 1 and "records lost writing to" in warnings[0]  # once a minute


def test_an_s3_log_whose_region_lookup_fails_fails_writes_not_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pyarrow looks an s3:// bucket's region up when the filesystem is opened (unless an
    # endpoint or region is given) and raises this when it cannot: the server must start
    # anyway, count what it cannot write, say why, and write once the lookup works
    reachable = threading.Event()
    opened = []

    def open_destination(path: str):
        opened.append(path)
        if not reachable.is_set():
            raise OSError(
                "When resolving region for bucket 'evergreen-logs': AWS Error "
                "NETWORK_CONNECTION during HeadBucket operation: curlCode: 6, Could not "
                "resolve hostname"
            )
        return pafs.LocalFileSystem(), str(tmp_path), True

    monkeypatch.setattr(sink_module, "open_destination", open_destination)
    counters = Counters()
    started = time.perf_counter()
    sink = PredictionSink(
        config("s3://evergreen-logs/serve", flush_records=1), SCHEMA, META, counters
    )
    sink.start()
    assert time.perf_counter() - started < 0.5  # the lookup is the writer thread's
    wait_for(lambda: counters.last_error()["last_error"] is not None)
    assert counters.last_error()["last_error"].startswith(
        "cannot open s3://evergreen-logs/serve: OSError: When resolving region"
    )
    assert sink.submit(entry([1, 2]))
    wait_for(lambda: counters.snapshot()["failed"] == 2)
    reachable.set()  # the network is back: the next write opens the destination again
    assert sink.submit(entry([3]))
    wait_for(lambda: counters.snapshot()["written"] == 1)
    sink.close()
    assert len(opened) == 3 and [r["customer_id"] for r in read_log(tmp_path)] == ["3"]


def test_records_go_to_an_s3_prefix(
    s3_endpoint: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import boto3

    # no instance-metadata lookups (the AWS SDK in pyarrow tries them, with timeouts)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    client = boto3.client("s3")
    bucket = f"logs-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    counters = Counters()
    sink = PredictionSink(config(f"s3://{bucket}/serve"), SCHEMA, META, counters).start()
    sink.submit(entry([1, 2, 3]))
    sink.close()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert len(keys) == 1 and keys[0].startswith("serve/date=") and keys[0].endswith(".parquet")
    fs, base, local = open_destination(f"s3://{bucket}/serve")
    assert not local and base == f"{bucket}/serve"
    table = ds.dataset(base, filesystem=fs, format="parquet", partitioning="hive").to_table()
    assert table.column("customer_id").to_pylist() == ["1", "2", "3"]
    assert counters.snapshot()["written"] == 3


# After the S3 test on purpose: the stuck write below keeps retrying in pyarrow's (process-wide)
# S3 client for ~10 s after the socket closes, which would slow an S3 test that follows it.
@pytest.fixture
def silent_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An address that accepts TCP connections and never answers: a hung object store."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield f"127.0.0.1:{server.getsockname()[1]}"


def test_a_hung_sink_drops_beyond_the_bound_and_never_blocks(silent_endpoint: str) -> None:
    path = f"s3://bucket/logs?endpoint_override={silent_endpoint}&scheme=http"
    counters = Counters()
    cfg = config(path, max_queued=5, flush_records=1)
    sink = PredictionSink(cfg, SCHEMA, META, counters).start()
    took = []
    accepted = []
    for i in range(50):
        started = time.perf_counter()
        accepted.append(sink.submit(entry([i])))
        took.append(time.perf_counter() - started)
        time.sleep(0.001)
    assert max(took) < 0.05, max(took)
    # the writer holds the first record(s) in its stuck write; 5 more wait; the rest drop
    snapshot = counters.snapshot()
    assert snapshot["dropped"] >= 40 and snapshot["logged"] + snapshot["dropped"] == 50
    assert accepted.count(False) == snapshot["dropped"]
    started = time.perf_counter()
    sink.close(timeout=0.5)
    assert time.perf_counter() - started < 2.0  # shutdown is bounded too


def test_only_folders_and_s3_are_destinations() -> None:
    with pytest.raises(ValueError, match="local folder or s3://"):
        open_destination("gs://bucket/logs")


def test_submissions_from_many_threads_are_all_counted(tmp_path: Path) -> None:
    counters = Counters()
    sink = PredictionSink(config(str(tmp_path), flush_records=50), SCHEMA, META, counters).start()

    def send() -> None:
        for i in range(100):
            sink.submit(entry([i]))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    assert len(read_log(tmp_path)) == 400
    assert counters.snapshot()["written"] == 400


def test_a_regression_logs_its_prediction_and_no_decision(tmp_path: Path) -> None:
    schema = ServingSchema(**{**SCHEMA.__dict__, "task": "regression"})
    sink = PredictionSink(config(str(tmp_path)), schema, META, Counters()).start()
    logged = entry([1, 2])
    assert sink.submit(logged)
    sink.close()
    rows = read_log(tmp_path)
    assert [r["prediction"] for r in rows] == pytest.approx(logged.scores.tolist())
    assert [r["shadow_prediction"] for r in rows] == pytest.approx((logged.scores / 2).tolist())
    assert not {"score", "decision", "shadow_score"} & set(rows[0])


def test_a_classification_log_keeps_its_columns_in_order(tmp_path: Path) -> None:
    sink = PredictionSink(config(str(tmp_path)), SCHEMA, META, Counters()).start()
    assert sink.submit(entry([1]))
    sink.close()
    [file] = tmp_path.rglob("*.parquet")
    names = ds.dataset(file, format="parquet").schema.names
    assert names[-4:] == ["score", "decision", "shadow_model_version", "shadow_score"]
    assert names[:5] == ["request_id", "row", "time", "latency_ms", "authenticated"]


def test_a_record_without_its_surrogate_key_is_logged_under_its_request_local_id(
    tmp_path: Path,
) -> None:
    schema = ServingSchema(**{**SCHEMA.__dict__, "entity_key": "row_key", "surrogate_key": True})
    models = api_models(schema, 5)
    body = {"records": [{"tenure": 1.0, "plan": "basic"}, {"row_key": "ab12", "tenure": 2.0,
                                                           "plan": None}]}  # fmt: skip
    wire = models.parse(json.dumps(body).encode())
    logged = LogEntry(uuid.uuid4().hex, time.time(), 1.0, wire, np.array([0.2, 0.7]),
                      np.array([False, True]), None)  # fmt: skip
    sink = PredictionSink(config(str(tmp_path)), schema, META, Counters()).start()
    assert sink.submit(logged)
    sink.close()
    rows = read_log(tmp_path)
    assert [(r["row_key"], r["row"]) for r in rows] == [("#0", 0), ("ab12", 1)]
    assert {r["request_id"] for r in rows} == {logged.request_id}
    # the monitor reads this log as it read the ones before
    scores, info = read_logged(str(tmp_path), 7)
    assert scores.tolist() == pytest.approx([0.2, 0.7]) and info["rows"] == 2


def test_buffered_records_add_no_objects_for_the_garbage_collector(tmp_path: Path) -> None:
    # 20,000 buffered entries kept as objects made each full collection in a serving process
    # walk ~100,000 more objects: 25-150 ms pauses of its event loop (bench/README.md)
    counters = Counters()
    sink = PredictionSink(config(str(tmp_path), max_queued=10_000, flush_records=10_000), SCHEMA,
                          META, counters).start()  # fmt: skip
    sink.submit(entry([0, "k-0"]))  # the buffer's own lists exist from here on
    gc.collect()
    tracked = len(gc.get_objects())
    for i in range(1, 2001):
        assert sink.submit(entry([i, f"k-{i}"], shadow=i % 3 != 0))
    gc.collect()
    assert len(gc.get_objects()) - tracked < 100  # not ~2,000 entries x their objects
    sink.close()
    rows = read_log(tmp_path)
    assert len(rows) == counters.snapshot()["written"] == 4002
    assert [r["customer_id"] for r in rows[:4]] == ["0", "k-0", "1", "k-1"]
    assert [r["row"] for r in rows[:4]] == [0, 1, 0, 1]
    assert rows[6]["shadow_score"] is None and rows[6]["customer_id"] == "3"
    assert rows[8]["shadow_score"] == pytest.approx(0.05)


def test_refusals_count_requests_and_the_fields_their_errors_name() -> None:
    from serve.sink import Refusals

    refusals = Refusals(["customer_id", "plan", "orders_28d"])
    assert refusals.snapshot() == {"requests": 0, "by_field": {}}
    refusals.add([{"loc": ("body", "record", "plan")}, {"loc": ("body",)}])
    refusals.add([{"loc": ("body", "batch", "records", 3, "plan")},
                  {"loc": ("body", "batch", "records", 4, "orders_28d")}])  # fmt: skip
    assert refusals.snapshot() == {"requests": 2, "by_field": {"plan": 2, "orders_28d": 1}}
