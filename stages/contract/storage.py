"""Where files live and how they are written: a local folder or any fsspec URL
(`s3://bucket/prefix`), opened one way by the simulator, ingest and publish; the one definition
of a partition's folder name (`date=YYYY-MM-DD`); and the atomic local write every writer of
the project uses (a temporary sibling, then a rename; the temporary file never outlives a
failed write)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

PARTITION_RE = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")


def s3_filesystem() -> Any:
    """A fresh s3fs instance without a listings cache, so a second call in the same process
    (a second ingest or publish) sees the objects written since the first. botocore reads
    AWS_ENDPOINT_URL itself."""
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)


def tmp_for(path: Path) -> Path:
    """The temporary sibling a file is written to before its rename (hidden: the dot keeps a
    leftover out of readers that skip hidden files)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_bytes_atomic(data: bytes, path: str | Path) -> Path:
    """Write to a temporary sibling, then rename: readers never see half a file, and a failed
    write (a full disk, a read-only folder) leaves no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_for(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class Lake:
    """A lake root, local or any fsspec URL; local writes are atomic (temp file + rename)."""

    def __init__(self, url: str) -> None:
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        self.url = url
        if url.startswith("s3://"):
            self.fs, root = s3_filesystem(), url.removeprefix("s3://")
        else:
            self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.path(rel)))

    def read(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def files(self, rel_dir: str) -> list[str]:
        """The files directly in `rel_dir`, as paths relative to the root (none: [])."""
        path = self.path(rel_dir)
        if not self.fs.isdir(path):
            return []
        found = self.fs.ls(path, detail=True)
        names = sorted(str(f["name"]).rstrip("/").rsplit("/", 1)[-1] for f in found
                       if f.get("type") == "file")  # fmt: skip
        return [f"{rel_dir}/{name}" for name in names]

    def remove(self, rel: str) -> None:
        self.fs.rm_file(self.path(rel))

    def write(self, rel: str, data: bytes) -> None:
        path = self.path(rel)
        if not self.local:
            self.fs.pipe_file(path, data)
            return
        write_bytes_atomic(data, Path(path))
