"""`evergreen ingest`: only new or changed lake objects move; data.dvc changes with the data."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from stages.cli.ingest import (
    MANIFEST,
    IngestPlan,
    ObjectInfo,
    dvc_executable,
    ingest,
    main,
    plan_ingest,
    read_manifest,
)
from tests.conftest import customers_frame, events_frame, write_params, write_partition

CUSTOMERS = "landing/customers/date=2024-01-01/part-0.parquet"
EVENTS_1 = "landing/events/date=2024-01-01/part-0.parquet"
EVENTS_2 = "landing/events/date=2024-01-02/part-0.parquet"
SUCCESS = "landing/events/date=2024-01-02/_SUCCESS"  # not parquet: copied all the same
EVENTS_3 = "landing/events/date=2024-01-03/part-0.parquet"


def parquet_bytes(rows: int, start: int = 0) -> bytes:
    # uncompressed, no dictionary: the size depends on the row count only, not on the values
    buf = io.BytesIO()
    table = pa.table({"id": pa.array(range(start, start + rows), pa.int64())})
    pq.write_table(table, buf, compression="none", use_dictionary=False)
    return buf.getvalue()


def put(root: Path, relpath: str, content: bytes) -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def stamp(path: Path) -> tuple[int, int]:
    """Inode and mtime: both stay put unless the file was written again."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    put(root, CUSTOMERS, parquet_bytes(3))
    put(root, EVENTS_1, parquet_bytes(4))
    put(root, EVENTS_2, parquet_bytes(5))
    put(root, SUCCESS, b"")
    return root


# --- the pure plan ------------------------------------------------------------------------------


def test_plan_sorts_objects_by_what_changed() -> None:
    lake = {
        "landing/a": ObjectInfo(10, mtime_ns=1),
        "landing/b": ObjectInfo(10, mtime_ns=2),  # newer mtime, same size
        "landing/c": ObjectInfo(11, etag="x"),  # bigger
        "landing/d": ObjectInfo(11, etag="y2"),  # new ETag, same size
        "landing/e": ObjectInfo(1, etag="z"),
    }
    manifest = {
        "landing/a": ObjectInfo(10, mtime_ns=1),
        "landing/b": ObjectInfo(10, mtime_ns=1),
        "landing/c": ObjectInfo(10, etag="x"),
        "landing/d": ObjectInfo(11, etag="y1"),
        "landing/gone": ObjectInfo(3, etag="g"),
    }
    assert plan_ingest(lake, manifest) == IngestPlan(
        new=("landing/e",),
        changed=("landing/b", "landing/c", "landing/d"),
        unchanged=("landing/a",),
        missing=("landing/gone",),
    )
    assert plan_ingest(lake, {}).to_copy == tuple(sorted(lake))


# --- a local lake -------------------------------------------------------------------------------


def test_first_run_copies_all_and_second_run_none(lake: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = ingest(str(lake), data)
    assert first.plan.new == tuple(sorted((CUSTOMERS, EVENTS_1, EVENTS_2, SUCCESS)))
    assert first.bytes_copied == sum((lake / r).stat().st_size for r in first.plan.new)
    for relpath in first.plan.new:
        assert (data / relpath).read_bytes() == (lake / relpath).read_bytes()
        assert (data / relpath).stat().st_mtime_ns == (lake / relpath).stat().st_mtime_ns
    manifest_file = data / MANIFEST
    raw = json.loads(manifest_file.read_text())
    assert list(raw) == sorted(raw)
    assert raw[EVENTS_1] == {
        "size": (lake / EVENTS_1).stat().st_size,
        "mtime_ns": (lake / EVENTS_1).stat().st_mtime_ns,
    }
    before = manifest_file.read_bytes(), stamp(manifest_file)
    stamps = {r: stamp(data / r) for r in first.plan.new}

    second = ingest(str(lake), data)
    assert second.copied == 0 and second.bytes_copied == 0
    assert second.plan.unchanged == first.plan.new
    assert not second.manifest_written
    assert (manifest_file.read_bytes(), stamp(manifest_file)) == before
    assert {r: stamp(data / r) for r in first.plan.new} == stamps
    assert not list(data.rglob("*.ingest-tmp"))


def test_changed_content_copies_only_that_object(lake: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    ingest(str(lake), data)
    stamps = {r: stamp(data / r) for r in (CUSTOMERS, EVENTS_2, SUCCESS)}
    put(lake, EVENTS_1, parquet_bytes(40))  # more rows: another size

    report = ingest(str(lake), data)
    assert report.plan.changed == (EVENTS_1,) and report.plan.new == ()
    assert report.bytes_copied == (lake / EVENTS_1).stat().st_size
    assert pq.read_table(data / EVENTS_1).num_rows == 40
    assert {r: stamp(data / r) for r in stamps} == stamps


def test_newer_mtime_with_same_size_copies_again(lake: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    ingest(str(lake), data)
    source = lake / CUSTOMERS
    size = source.stat().st_size
    put(lake, CUSTOMERS, parquet_bytes(3, start=100))  # same shape, other values
    assert source.stat().st_size == size
    later = source.stat().st_mtime_ns + 5_000_000_000
    os.utime(source, ns=(later, later))

    report = ingest(str(lake), data)
    assert report.plan.changed == (CUSTOMERS,) and report.copied == 1
    assert (data / CUSTOMERS).read_bytes() == source.read_bytes()
    assert (data / CUSTOMERS).stat().st_mtime_ns == later


def test_new_partition_copies_only_it(lake: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = ingest(str(lake), data)
    stamps = {r: stamp(data / r) for r in first.plan.new}
    put(lake, EVENTS_3, parquet_bytes(2))

    report = ingest(str(lake), data)
    assert report.plan.new == (EVENTS_3,)
    assert report.plan.unchanged == first.plan.new
    assert {r: stamp(data / r) for r in stamps} == stamps
    assert EVENTS_3 in read_manifest(data / MANIFEST)


def test_object_removed_from_lake_is_kept_and_reported(
    lake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    args = ["--lake", str(lake), "--data", str(data), "--no-dvc", "--deleted", "keep"]
    assert main(args) == 0
    (lake / EVENTS_2).unlink()

    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "1 missing in lake (kept)" in out
    assert "warning" in err and EVENTS_2 in err and "ingest.deleted: keep" in err
    assert (data / EVENTS_2).read_bytes() == parquet_bytes(5)
    assert EVENTS_2 in read_manifest(data / MANIFEST)


def test_objects_removed_from_lake_are_removed_from_data_by_default(
    lake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    # no params file: the default policy, mirror
    args = ["--lake", str(lake), "--data", str(data), "--no-dvc", "--params", "absent.yaml"]
    assert main(args) == 0
    (lake / EVENTS_2).unlink()
    (lake / SUCCESS).unlink()
    stray = put(data, "landing/events/date=2023-12-31/part-0.parquet", parquet_bytes(1))

    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "3 missing in lake (removed)" in out
    assert f"removed 3 object(s) from {data}/" in out and "ingest.deleted: mirror" in out
    assert err == ""
    # the emptied partition folders go too: validate must not see an empty date=... folder
    assert sorted(p.relative_to(data).as_posix() for p in (data / "landing").rglob("*")) == [
        "landing/customers",
        "landing/customers/date=2024-01-01",
        CUSTOMERS,
        "landing/events",
        "landing/events/date=2024-01-01",
        EVENTS_1,
    ]
    assert not stray.exists()
    assert set(read_manifest(data / MANIFEST)) == {CUSTOMERS, EVENTS_1}
    report = ingest(str(lake), data)
    assert report.plan.missing == () and not report.data_changed


def test_partition_rewritten_under_another_name_is_replaced_under_mirror(
    lake: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    ingest(str(lake), data, deleted="keep")
    renamed = EVENTS_1.replace("part-0", "part-1")
    (lake / EVENTS_1).rename(lake / renamed)

    kept = ingest(str(lake), data, deleted="keep")
    assert (kept.plan.new, kept.plan.missing, kept.removed) == ((renamed,), (EVENTS_1,), ())
    assert (data / EVENTS_1).is_file()  # both files: validate would read the day twice

    mirrored = ingest(str(lake), data)
    assert (mirrored.plan.missing, mirrored.removed) == ((EVENTS_1,), (EVENTS_1,))
    partition = data / EVENTS_1.rsplit("/", 1)[0]
    assert sorted(p.name for p in partition.iterdir()) == ["part-1.parquet"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"ingest": {"deleted": "keep"}}, 0),
        ({"ingest": {"deleted": "purge"}}, 2),
        ({"ingest": "mirror"}, 2),
    ],
    ids=["keep", "unknown-policy", "not-a-mapping"],
)
def test_policy_comes_from_params(
    lake: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: dict,
    expected: int,
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"lake": {"path": str(lake)}, **content}))
    data = tmp_path / "data"
    args = ["--params", str(params), "--data", str(data), "--no-dvc"]
    ingest(str(lake), data)
    (lake / EVENTS_2).unlink()

    assert main(args) == expected
    err = capsys.readouterr().err
    if expected:
        assert len(err.strip().splitlines()) == 1 and str(params) in err and "ingest" in err
    else:
        assert (data / EVENTS_2).is_file() and "kept" in err
    # the command line wins over params
    if expected == 0:
        assert main([*args, "--deleted", "mirror"]) == 0
        assert not (data / EVENTS_2).exists()


def test_local_copy_deleted_by_hand_is_copied_again(lake: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    ingest(str(lake), data)
    (data / EVENTS_1).unlink()
    leftover = put(data, "landing/events/date=2024-01-01/.part-0.parquet.99.ingest-tmp", b"half")

    report = ingest(str(lake), data)
    assert report.plan.new == (EVENTS_1,) and report.copied == 1
    assert (data / EVENTS_1).read_bytes() == (lake / EVENTS_1).read_bytes()
    assert not leftover.exists()


def test_lake_defaults_to_params(lake: Path, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"lake": {"path": str(lake)}}))
    data = tmp_path / "data"
    assert main(["--params", str(params), "--data", str(data), "--no-dvc"]) == 0
    assert (data / CUSTOMERS).is_file()


@pytest.mark.parametrize("with_root", [False, True], ids=["no-lake", "no-landing"])
def test_missing_lake_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], with_root: bool
) -> None:
    root = tmp_path / "nolake"
    if with_root:
        put(root, "other/x.parquet", b"x")
    data = tmp_path / "data"
    assert main(["--lake", str(root), "--data", str(data), "--no-dvc"]) == 2
    err = capsys.readouterr().err
    assert str(root) in err
    assert ("landing" in err) is with_root
    assert not data.exists()


def test_corrupt_manifest_names_the_file(lake: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    put(data, MANIFEST, b"{not json")
    with pytest.raises(ValueError, match=MANIFEST):
        ingest(str(lake), data)


# --- a real git + DVC repository ----------------------------------------------------------------


def data_dvc_md5(path: Path) -> str:
    return yaml.safe_load(path.read_text())["outs"][0]["md5"]


def test_ingest_records_data_dvc_only_when_data_changed(
    lake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([dvc_executable(), "init", "-q"], cwd=repo, check=True)
    monkeypatch.chdir(repo)
    args = ["--lake", str(lake), "--data", "data", "--params", "absent.yaml"]

    assert main(args) == 0
    data_dvc = repo / "data.dvc"
    first = data_dvc.read_bytes()
    assert yaml.safe_load(first)["outs"][0]["nfiles"] == 5  # 4 lake objects + the manifest

    assert main(args) == 0
    assert data_dvc.read_bytes() == first

    put(lake, EVENTS_3, parquet_bytes(2))
    assert main(args) == 0
    assert data_dvc_md5(data_dvc) != yaml.safe_load(first)["outs"][0]["md5"]
    assert yaml.safe_load(data_dvc.read_text())["outs"][0]["nfiles"] == 6

    (lake / EVENTS_3).unlink()  # mirrored: the snapshot is the first one again
    assert main(args) == 0
    assert data_dvc_md5(data_dvc) == yaml.safe_load(first)["outs"][0]["md5"]


# --- an S3 lake, served by a real moto server ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"moto_server not listening on 127.0.0.1:{port} after {timeout} s")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    exe = Path(sys.executable).parent / "moto_server"
    if not exe.is_file():
        pytest.fail(f"{exe} missing: install the dev extra (moto[server])")
    port = free_port()
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc)
        endpoint = f"http://127.0.0.1:{port}"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_ENDPOINT_URL", endpoint)
            mp.setenv("AWS_ACCESS_KEY_ID", "testing")
            mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            # a developer's own AWS setup must not leak into (or be reached by) the test
            mp.setenv("AWS_CONFIG_FILE", os.devnull)
            mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
                mp.delenv(name, raising=False)
            yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def bucket(s3_endpoint: str):  # -> (boto3 client, bucket name)
    import boto3

    client = boto3.client("s3")
    name = f"lake-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return client, name


def test_s3_copies_only_new_and_changed_objects(bucket, tmp_path: Path) -> None:
    client, name = bucket
    objects = {CUSTOMERS: parquet_bytes(3), EVENTS_1: parquet_bytes(4), EVENTS_2: parquet_bytes(5)}
    for relpath, body in objects.items():
        client.put_object(Bucket=name, Key=f"shop/{relpath}", Body=body)
    url, data = f"s3://{name}/shop", tmp_path / "data"

    first = ingest(url, data)
    assert first.plan.new == tuple(sorted(objects))
    for relpath, body in objects.items():
        assert (data / relpath).read_bytes() == body
    etag = client.head_object(Bucket=name, Key=f"shop/{EVENTS_1}")["ETag"].strip('"')
    assert read_manifest(data / MANIFEST)[EVENTS_1] == ObjectInfo(len(objects[EVENTS_1]), etag)
    stamps = {r: stamp(data / r) for r in objects}

    client.put_object(Bucket=name, Key=f"shop/{EVENTS_3}", Body=parquet_bytes(2))
    second = ingest(url, data)
    assert (second.plan.new, second.plan.changed) == ((EVENTS_3,), ())
    assert second.plan.unchanged == tuple(sorted(objects))
    assert second.bytes_copied == len(parquet_bytes(2))
    assert {r: stamp(data / r) for r in objects} == stamps

    changed = parquet_bytes(4, start=1000)  # same size, other bytes: only the ETag tells
    assert len(changed) == len(objects[EVENTS_1])
    client.put_object(Bucket=name, Key=f"shop/{EVENTS_1}", Body=changed)
    third = ingest(url, data)
    assert (third.plan.new, third.plan.changed) == ((), (EVENTS_1,))
    assert (data / EVENTS_1).read_bytes() == changed
    assert {r: stamp(data / r) for r in (CUSTOMERS, EVENTS_2)} == {
        r: stamps[r] for r in (CUSTOMERS, EVENTS_2)
    }

    assert ingest(url, data).copied == 0


@pytest.mark.parametrize("policy", ["mirror", "keep"])
def test_s3_objects_deleted_from_the_lake_follow_the_policy(
    bucket, tmp_path: Path, policy: str
) -> None:
    client, name = bucket
    for relpath, body in ((CUSTOMERS, parquet_bytes(3)), (EVENTS_1, parquet_bytes(4))):
        client.put_object(Bucket=name, Key=f"shop/{relpath}", Body=body)
    url, data = f"s3://{name}/shop", tmp_path / "data"
    ingest(url, data, deleted=policy)
    client.delete_object(Bucket=name, Key=f"shop/{EVENTS_1}")

    report = ingest(url, data, deleted=policy)
    assert report.plan.missing == (EVENTS_1,)
    assert (data / EVENTS_1).exists() is (policy == "keep")
    assert (EVENTS_1 in read_manifest(data / MANIFEST)) is (policy == "keep")
    assert report.removed == ((EVENTS_1,) if policy == "mirror" else ())
    assert (data / CUSTOMERS).read_bytes() == parquet_bytes(3)


def test_s3_missing_bucket_or_landing_exits_2(
    bucket, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client, name = bucket
    client.put_object(Bucket=name, Key="shop/other/x.parquet", Body=b"x")
    data = tmp_path / "data"
    missing = f"nobucket-{uuid.uuid4().hex[:12]}"

    assert main(["--lake", f"s3://{missing}/shop", "--data", str(data), "--no-dvc"]) == 2
    assert missing in capsys.readouterr().err
    assert main(["--lake", f"s3://{name}/shop", "--data", str(data), "--no-dvc"]) == 2
    assert f"s3://{name}/shop/landing" in capsys.readouterr().err
    assert not data.exists()


# --- through validate: what the lake holds now is what validate reads ----------------------------


def _validated_events(tmp_path: Path, params: Path) -> pd.DataFrame:
    from stages.validate import main as validate

    out = tmp_path / "validated"
    landing = tmp_path / "data" / "landing"
    assert (
        validate([str(landing), str(out), str(tmp_path / "v.json"), "--params", str(params)]) == 0
    )
    return pd.read_parquet(out / "events" / "date=2026-01-01.parquet")


def test_a_replaced_or_renamed_partition_reaches_validate(tmp_path: Path, shop_params) -> None:
    params = write_params(shop_params, tmp_path / "params.yaml")
    lake, data = tmp_path / "lake", tmp_path / "data"
    first = write_partition(lake, "events", "2026-01-01", events_frame(
        [(i, 10, "2026-01-01 10:00", "session", None) for i in range(3)]
    ))  # fmt: skip
    write_partition(lake, "customers", "2026-01-01", customers_frame(
        [(10, "2025-12-01", "DE", "basic", "ads", 9.0, "2026-01-01 00:00")]
    ))  # fmt: skip
    ingest(str(lake), data)
    assert _validated_events(tmp_path, params)["event_id"].tolist() == [0, 1, 2]

    # the same file name, new bytes (a later mtime, as a rewrite gives): copied again, and
    # validate redoes the partition by its content hash
    write_partition(lake, "events", "2026-01-01", events_frame(
        [(i, 10, "2026-01-01 11:00", "order", 5.0) for i in (7, 8)]
    ))  # fmt: skip
    later = first.stat().st_mtime_ns + 5_000_000_000
    os.utime(first, ns=(later, later))
    assert ingest(str(lake), data).plan.changed == (first.relative_to(lake).as_posix(),)
    assert _validated_events(tmp_path, params)["event_id"].tolist() == [7, 8]

    # rewritten under another file name: mirror drops the old file, so the day is not doubled
    first.rename(first.with_name("part-0001.parquet"))
    report = ingest(str(lake), data)
    assert report.removed == (first.relative_to(lake).as_posix(),)
    assert _validated_events(tmp_path, params)["event_id"].tolist() == [7, 8]
