"""A write that fails (a full disk, a read-only folder) leaves the destination as it was and no
temporary sibling behind, whichever writer of the project it went through."""

from __future__ import annotations

import errno
import os
import shutil
from io import StringIO
from pathlib import Path

import ibis
import pyarrow as pa
import pytest

from stages.cli import overrides
from stages.lib import engine, io
from tests.conftest import ROOT

TABLE = pa.table({"id": pa.array(range(100), pa.int64())})


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_write_table_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    real = io.pq.write_table

    def half_then_full(table, where, **options):  # the file is started, then the disk fills
        real(table.slice(0, 10), where, **options)
        disk_full()

    monkeypatch.setattr(io.pq, "write_table", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        io.write_table(TABLE, tmp_path / "t.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_write_table_rename_failure_leaves_no_temporary_file(tmp_path: Path, monkeypatch):
    io.write_table(TABLE, tmp_path / "t.parquet")
    before = (tmp_path / "t.parquet").read_bytes()
    monkeypatch.setattr(io.os, "replace", disk_full)
    with pytest.raises(OSError):
        io.write_table(TABLE.slice(0, 5), tmp_path / "t.parquet")
    assert leftovers(tmp_path) == []
    assert (tmp_path / "t.parquet").read_bytes() == before  # the old file, whole


def test_write_parquet_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    def one_batch_then_full(con, expr, schema):
        yield TABLE.to_batches()[0]
        disk_full()

    monkeypatch.setattr(engine, "batches", one_batch_then_full)
    with pytest.raises(OSError, match="No space left"):
        engine.write_parquet(
            ibis.duckdb.connect(), ibis.memtable(TABLE), tmp_path / "e.parquet", TABLE.schema
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "write",
    [
        lambda path: io.write_json({"a": 1}, path),
        lambda path: io.write_metrics(path, {"a": 1.0}),
        lambda path: io.write_frame(TABLE.to_pandas(), path),
    ],
    ids=["write_json", "write_metrics", "write_frame"],
)
def test_byte_writers_leave_no_temporary_file(tmp_path: Path, monkeypatch, write) -> None:
    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError):
        write(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["while writing", "at the rename"])
def test_overrides_apply_writes_conf_atomically(tmp_path: Path, monkeypatch, where) -> None:
    conf = shutil.copytree(ROOT / "conf", tmp_path / "conf")
    before = (conf / "config.yaml").read_bytes()
    if where == "while writing":
        real = overrides._round_trip

        def filling():  # the YAML's first half is written, then the disk is full
            rt = real()
            dump = rt.dump

            def half(tree, stream):
                whole = StringIO()
                dump(tree, whole)
                stream.write(whole.getvalue()[: len(whole.getvalue()) // 2])
                disk_full()

            rt.dump = half
            return rt

        monkeypatch.setattr(overrides, "_round_trip", filling)
    else:
        monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        overrides.apply_overrides(conf, overrides.parse_overrides(["seed=11"]))
    assert (conf / "config.yaml").read_bytes() == before  # not truncated half-way
    assert leftovers(conf) == []


def test_ingest_manifest_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    from stages.cli import ingest
    from stages.contract import storage

    path = tmp_path / "manifest.json"
    monkeypatch.setattr(storage.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        ingest.write_manifest(path, {"landing/t/date=2026-01-01/p.parquet": ingest.ObjectInfo(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == []
