"""`evergreen publish`: atomic, idempotent copies of the batch predictions to a local or S3 lake."""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from stages.cli.publish import main, publish
from stages.lib.predictions import read_published
from tests.stages.test_ingest import bucket, s3_endpoint  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]
DAY = "2026-04-30"


def predictions_file(path: Path, day: str = DAY, rows: int = 5, shift: float = 0.0) -> Path:
    frame = pd.DataFrame(
        {
            "customer_id": range(1, rows + 1),
            "snapshot_date": [dt.date.fromisoformat(day)] * rows,
            "score": [round(0.1 * i + shift, 3) for i in range(rows)],
            "decision": [0.1 * i + shift >= 0.5 for i in range(rows)],
            "model_version": "m1",
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    (tmp_path / "lake" / "landing").mkdir(parents=True)
    return tmp_path / "lake"


def test_publish_twice_writes_one_copy(lake: Path, tmp_path: Path, capsys) -> None:
    source = predictions_file(tmp_path / "predictions.parquet")
    args = ["--lake", str(lake), "--predictions", str(source)]
    assert main(args) == 0
    dest = lake / "predictions" / f"date={DAY}" / "predictions.parquet"
    assert dest.read_bytes() == source.read_bytes()
    stamp = dest.stat().st_mtime_ns, dest.stat().st_ino
    assert main(args) == 0
    assert "already published" in capsys.readouterr().out
    assert (dest.stat().st_mtime_ns, dest.stat().st_ino) == stamp  # not rewritten
    assert sorted(p.name for p in dest.parent.iterdir()) == ["predictions.parquet"]
    assert len(read_published(str(lake))) == 5


def test_new_predictions_of_the_same_day_replace_the_old(lake: Path, tmp_path: Path) -> None:
    first = publish(predictions_file(tmp_path / "a.parquet").read_bytes(), str(lake))
    second = publish(predictions_file(tmp_path / "b.parquet", shift=0.05).read_bytes(), str(lake))
    assert first.written and second.written and first.md5 != second.md5
    assert hashlib.md5(Path(second.destination).read_bytes()).hexdigest() == second.md5
    other = publish(
        predictions_file(tmp_path / "c.parquet", day="2026-05-01").read_bytes(), str(lake)
    )
    published = read_published(str(lake))
    assert sorted(published["snapshot_date"].astype(str).unique()) == [DAY, "2026-05-01"]
    assert other.destination.endswith("predictions/date=2026-05-01/predictions.parquet")


def test_bad_input_is_named_and_nothing_is_written(lake: Path, tmp_path: Path, capsys) -> None:
    assert main(["--lake", str(lake), "--predictions", str(tmp_path / "none.parquet")]) == 2
    assert "none.parquet: predictions not found" in capsys.readouterr().err
    mixed = pd.concat(
        [
            pd.read_parquet(predictions_file(tmp_path / "a.parquet")),
            pd.read_parquet(predictions_file(tmp_path / "b.parquet", day="2026-05-01")),
        ]
    )
    mixed.to_parquet(tmp_path / "mixed.parquet", index=False)
    assert main(["--lake", str(lake), "--predictions", str(tmp_path / "mixed.parquet")]) == 2
    assert "one snapshot date" in capsys.readouterr().err
    assert (
        main(["--lake", str(tmp_path / "nope"), "--predictions", str(tmp_path / "a.parquet")]) == 2
    )
    assert "lake not found" in capsys.readouterr().err
    assert not (lake / "predictions").exists()


def test_unwritable_lake_is_one_line_naming_the_destination(
    lake: Path, tmp_path: Path, capsys
) -> None:
    source = predictions_file(tmp_path / "predictions.parquet")
    args = ["--lake", str(lake), "--predictions", str(source)]
    # tests run as root, whom chmod does not stop: a file where the folder should be does
    (lake / "predictions").write_text("not a folder")
    assert main(args) == 2
    out = capsys.readouterr()
    dest = f"{lake}/predictions/date={DAY}/predictions.parquet"
    assert (
        out.err
        == f"evergreen publish: cannot write {dest}: {lake}/predictions is a file, not a folder\n"
    )
    assert out.err.count("\n") == 1 and "Traceback" not in out.err and out.out == ""


def test_full_disk_is_one_line_and_leaves_no_temporary_file(
    lake: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    source = predictions_file(tmp_path / "predictions.parquet")

    def full(self, data):  # half the bytes land, then the disk is full
        with self.open("wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    assert main(["--lake", str(lake), "--predictions", str(source)]) == 2
    err = capsys.readouterr().err
    folder = lake / "predictions" / f"date={DAY}"
    assert err == (
        f"evergreen publish: cannot write {folder}/predictions.parquet: No space left on device\n"
    )
    assert list(folder.iterdir()) == []  # no `.predictions.parquet.tmp-<pid>` left


def test_broken_params_file_is_one_line(tmp_path: Path, capsys) -> None:
    source = predictions_file(tmp_path / "predictions.parquet")
    params = tmp_path / "params.yaml"
    params.write_text("lake:\n  path: [lake\n")
    assert main(["--params", str(params), "--predictions", str(source)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"evergreen publish: {params}, line 3: not valid YAML (")
    assert err.count("\n") == 1


# A publish killed while it writes: the bytes go to a temporary name that is renamed only once
# complete, so the final name never holds a partial file. The child writes half its bytes,
# signals, and hangs inside the write until it is killed.
KILLED_WRITER = textwrap.dedent(
    """
    import pathlib, sys, time
    original = pathlib.Path.write_bytes

    def slow(self, data):
        with self.open("wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            print("writing", self, flush=True)
            time.sleep(120)
            f.write(data[len(data) // 2 :])
        return len(data)

    pathlib.Path.write_bytes = slow
    from stages.cli.publish import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_kill_mid_write_leaves_no_partial_file(lake: Path, tmp_path: Path) -> None:
    source = predictions_file(tmp_path / "predictions.parquet", rows=2000)
    args = ["--lake", str(lake), "--predictions", str(source)]
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline()
        assert line.startswith("writing"), line
        tmp = Path(line.split(" ", 1)[1].strip())
        assert tmp.is_file() and 0 < tmp.stat().st_size < source.stat().st_size
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    final = lake / "predictions" / f"date={DAY}" / "predictions.parquet"
    assert not final.exists()
    assert read_published(str(lake)).empty  # readers skip the temporary file
    # the next publish completes and clears what the killed one left
    assert main(args) == 0
    assert final.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in final.parent.iterdir()) == ["predictions.parquet"]


def test_s3_publish_twice_puts_one_object(bucket, tmp_path: Path) -> None:  # noqa: F811
    client, name = bucket
    lake = f"s3://{name}/shop"
    source = predictions_file(tmp_path / "predictions.parquet")
    first = publish(source.read_bytes(), lake)
    key = f"shop/predictions/date={DAY}/predictions.parquet"
    head = client.head_object(Bucket=name, Key=key)
    time.sleep(1.1)  # LastModified has one-second resolution
    second = publish(source.read_bytes(), lake)
    assert first.written and not second.written
    assert client.head_object(Bucket=name, Key=key)["LastModified"] == head["LastModified"]
    listed = client.list_objects_v2(Bucket=name, Prefix="shop/predictions/")["Contents"]
    assert [o["Key"] for o in listed] == [key]
    assert head["ETag"].strip('"') == first.md5  # one PUT, not a multipart upload
    body = client.get_object(Bucket=name, Key=key)["Body"].read()
    assert body == source.read_bytes()
    assert read_published(lake)["score"].tolist() == pd.read_parquet(source)["score"].tolist()
    changed = publish(predictions_file(tmp_path / "b.parquet", shift=0.05).read_bytes(), lake)
    assert changed.written
    assert client.head_object(Bucket=name, Key=key)["ETag"].strip('"') == changed.md5


def test_s3_missing_bucket_is_named(s3_endpoint, tmp_path: Path) -> None:  # noqa: F811
    source = predictions_file(tmp_path / "predictions.parquet")
    with pytest.raises(FileNotFoundError, match="bucket 'no-such-bucket'"):
        publish(source.read_bytes(), "s3://no-such-bucket/shop")
