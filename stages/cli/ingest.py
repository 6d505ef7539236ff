"""Ingest: mirror the lake's landing zone into `data/landing/`, record the snapshot in `data.dvc`.

Only new or changed objects are copied: a local lake is compared by size and modification time,
an S3 lake by ETag and size, against `data/ingest-manifest.json` (which lives in `data/`, so DVC
versions it with the data). A replaced object (same name, new bytes) is copied again, so validate
sees its new content hash and redoes that partition. What happens to objects gone from the lake is
`ingest.deleted`: `mirror` (the default) removes them from data/landing, so a partition deleted
or replaced under another file name stops feeding validate; `keep` keeps and reports them, for a
lake whose retention expires objects the history must still hold. Either way nothing is lost:
every earlier data.dvc still restores what was removed.

We do not use `dvc import-url` + `dvc update` because on S3 an update downloads every object of
the directory again when any one of them changed, while ingest must cost in proportion to the
increment.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from stages.contract.storage import write_bytes_atomic
from stages.lib.params import PARAMS_FILE, default_lake, load_params

LANDING = "landing"
MANIFEST = "ingest-manifest.json"
TMP_SUFFIX = ".ingest-tmp"
# `ingest.deleted`: what becomes of a landed object that is gone from the lake
MIRROR, KEEP = "mirror", "keep"
DELETED_POLICIES = (MIRROR, KEEP)


class LakeNotFoundError(FileNotFoundError):
    """The lake (folder or bucket) or its `landing/` zone does not exist."""


@dataclass(frozen=True)
class ObjectInfo:
    """What identifies one version of a lake object: its size plus an ETag (S3) or mtime (local)."""

    size: int
    etag: str | None = None
    mtime_ns: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"size": self.size}
        if self.etag is not None:
            out["etag"] = self.etag
        if self.mtime_ns is not None:
            out["mtime_ns"] = self.mtime_ns
        return out

    @classmethod
    def from_json(cls, value: Any, where: str) -> ObjectInfo:
        if not isinstance(value, Mapping) or not isinstance(value.get("size"), int):
            raise ValueError(f"{where}: expected {{size, etag or mtime_ns}}, got {value!r}")
        return cls(size=value["size"], etag=value.get("etag"), mtime_ns=value.get("mtime_ns"))


@dataclass(frozen=True)
class IngestPlan:
    """Relative paths (`landing/...`) sorted into what ingest must do with them; `missing`: in
    data/ (recorded or not) but no longer in the lake."""

    new: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    @property
    def to_copy(self) -> tuple[str, ...]:
        return tuple(sorted(self.new + self.changed))


@dataclass(frozen=True)
class IngestReport:
    plan: IngestPlan
    bytes_copied: int
    data_dir: Path
    manifest: Mapping[str, ObjectInfo] = field(default_factory=dict)
    manifest_written: bool = False
    deleted: str = MIRROR
    # the missing objects removed from data/ (all of them under `mirror`, none under `keep`)
    removed: tuple[str, ...] = ()

    @property
    def copied(self) -> int:
        return len(self.plan.to_copy)

    @property
    def data_changed(self) -> bool:
        """Whether data/ differs from before the run (so data.dvc must be recorded again)."""
        return self.manifest_written or bool(self.removed)

    def summary(self) -> str:
        p = self.plan
        fate = "removed" if self.removed else "kept" if p.missing else ""
        return (
            f"ingest: {len(p.new)} new, {len(p.changed)} changed, {len(p.unchanged)} unchanged, "
            f"{len(p.missing)} missing in lake{f' ({fate})' if fate else ''}; "
            f"{self.bytes_copied} bytes copied into {self.data_dir}/{LANDING}"
        )


def plan_ingest(
    lake_listing: Mapping[str, ObjectInfo],
    manifest: Mapping[str, ObjectInfo],
    landed: Iterable[str] = (),
) -> IngestPlan:
    """Compare the lake's objects with what the manifest says data/ holds (and with the files
    `landed` in data/, which a manifest may not record: put there by hand, or left by a
    project this one was cloned from)."""
    new, changed, unchanged = [], [], []
    for relpath in sorted(lake_listing):
        if relpath not in manifest:
            new.append(relpath)
        elif manifest[relpath] != lake_listing[relpath]:
            changed.append(relpath)
        else:
            unchanged.append(relpath)
    missing = sorted((set(manifest) | set(landed)) - set(lake_listing))
    return IngestPlan(tuple(new), tuple(changed), tuple(unchanged), tuple(missing))


# --- lakes --------------------------------------------------------------------------------------


class Lake(Protocol):
    url: str

    def list(self) -> dict[str, ObjectInfo]:
        """Every object under `landing/`, keyed by its path relative to the lake root."""
        ...

    def fetch(self, relpath: str, dest: Path) -> None:
        """Write the object's bytes to `dest` (a temporary path the caller renames)."""
        ...


@dataclass(frozen=True)
class LocalLake:
    url: str

    @property
    def root(self) -> Path:
        return Path(self.url)

    def list(self) -> dict[str, ObjectInfo]:
        listing = {}
        for path in _walk_files(self.root / LANDING):
            st = path.stat()
            relpath = path.relative_to(self.root).as_posix()
            listing[relpath] = ObjectInfo(size=st.st_size, mtime_ns=st.st_mtime_ns)
        return listing

    def fetch(self, relpath: str, dest: Path) -> None:
        shutil.copy2(self.root / relpath, dest)  # copy2 keeps mtime, which the manifest compares


@dataclass(frozen=True)
class S3Lake:
    url: str
    fs: Any  # s3fs.S3FileSystem

    @property
    def base(self) -> str:
        return self.url.removeprefix("s3://").rstrip("/")

    def list(self) -> dict[str, ObjectInfo]:
        listing = {}
        found = self.fs.find(f"{self.base}/{LANDING}", detail=True)
        for key, info in found.items():
            if info.get("type") != "file" or key.endswith("/"):
                continue  # zero-byte "folder" markers some tools create
            relpath = _safe_relpath(key[len(self.base) + 1 :], self.url)
            etag = str(info.get("ETag", "")).strip('"')
            listing[relpath] = ObjectInfo(size=int(info["size"]), etag=etag)
        return listing

    def fetch(self, relpath: str, dest: Path) -> None:
        self.fs.get_file(f"{self.base}/{relpath}", str(dest))


def open_lake(url: str) -> Lake:
    """The lake at `url` (a folder or `s3://bucket/prefix`); raise if it has no landing zone."""
    if url.startswith("s3://"):
        return _open_s3(url)
    root = Path(url)
    if not root.is_dir():
        raise LakeNotFoundError(f"lake not found: {root} is not a directory")
    if not (root / LANDING).is_dir():
        raise LakeNotFoundError(f"lake {root} has no {LANDING}/ zone ({root / LANDING} missing)")
    return LocalLake(url)


def _open_s3(url: str) -> S3Lake:
    import s3fs

    # botocore reads AWS_ENDPOINT_URL itself; a fresh instance without listings cache so a second
    # ingest in the same process sees objects added since the first.
    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    lake = S3Lake(url, fs)
    bucket = lake.base.split("/", 1)[0]
    if not bucket or not fs.exists(bucket):
        raise LakeNotFoundError(f"lake not found: bucket '{bucket}' of {url} does not exist")
    if not fs.isdir(f"{lake.base}/{LANDING}"):
        raise LakeNotFoundError(f"lake {url} has no {LANDING}/ zone ({url}/{LANDING} missing)")
    return lake


def _walk_files(top: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_file():
                yield path


def _safe_relpath(relpath: str, lake_url: str) -> str:
    parts = PurePosixPath(relpath).parts
    if not parts or parts[0] != LANDING or ".." in parts:
        raise ValueError(f"{lake_url}: object '{relpath}' would land outside data/{LANDING}/")
    return relpath


# --- manifest -----------------------------------------------------------------------------------


def read_manifest(path: Path) -> dict[str, ObjectInfo]:
    """The manifest at `path`, or an empty one if data/ was never ingested."""
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a mapping relpath -> {{size, etag or mtime_ns}}")
    return {k: ObjectInfo.from_json(v, f"{path}: '{k}'") for k, v in raw.items()}


def manifest_bytes(manifest: Mapping[str, ObjectInfo]) -> bytes:
    """Deterministic serialisation, so an unchanged manifest keeps data.dvc unchanged."""
    payload = {k: manifest[k].to_json() for k in sorted(manifest)}
    return (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode()


def write_manifest(path: Path, manifest: Mapping[str, ObjectInfo]) -> bool:
    """Write the manifest atomically if its content differs; return whether it was written."""
    content = manifest_bytes(manifest)
    if path.is_file() and path.read_bytes() == content:
        return False  # an untouched file keeps its mtime, so DVC need not even rehash it
    write_bytes_atomic(content, path)  # a failed write leaves no temporary file
    return True


def _present(data_dir: Path, manifest: Mapping[str, ObjectInfo]) -> dict[str, ObjectInfo]:
    """Manifest entries whose copy is still in data/ with the recorded size.

    A copy deleted or truncated by hand is forgotten here, so it is copied again.
    """
    kept = {}
    for relpath, info in manifest.items():
        path = data_dir / relpath
        if path.is_file() and path.stat().st_size == info.size:
            kept[relpath] = info
    return kept


# --- copying ------------------------------------------------------------------------------------


def _tmp_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.{os.getpid()}{TMP_SUFFIX}")


def _remove_stale_tmp(data_dir: Path) -> None:
    """Drop temporary files a killed ingest left behind, so DVC never records them."""
    landing = data_dir / LANDING
    if landing.is_dir():
        for path in landing.rglob(f"*{TMP_SUFFIX}"):
            path.unlink()


def _copy_atomic(lake: Lake, relpath: str, dest: Path) -> None:
    # Replacing the name (never writing in place) also keeps DVC's cache intact when data/ is
    # checked out as hardlinks or symlinks into it.
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(dest)
    try:
        lake.fetch(relpath, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _landed(data_dir: Path) -> list[str]:
    """The files under data/landing, as lake-relative paths (temporary copies left out)."""
    landing = data_dir / LANDING
    if not landing.is_dir():
        return []
    return [
        p.relative_to(data_dir).as_posix()
        for p in _walk_files(landing)
        if not p.name.endswith(TMP_SUFFIX)
    ]


def _remove(data_dir: Path, relpath: str) -> None:
    """Delete a landed file and the partition folders it leaves empty (landing/ stays)."""
    path = data_dir / relpath
    path.unlink(missing_ok=True)
    landing = (data_dir / LANDING).resolve()
    parent = path.parent
    while parent.resolve() != landing and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def check_deleted(value: Any, where: str) -> str:
    """`ingest.deleted` as given, or ValueError naming `where` and the choices."""
    if value not in DELETED_POLICIES:
        raise ValueError(
            f"{where}: ingest.deleted is {value!r}, expected one of {DELETED_POLICIES}"
        )
    return str(value)


def ingest(lake_url: str, data_dir: str | Path, *, deleted: str = MIRROR) -> IngestReport:
    """Copy the lake's new and changed landing objects into `data_dir` and update its manifest;
    objects gone from the lake are removed from `data_dir` (`deleted="mirror"`) or kept
    (`"keep"`).

    Nothing is written if the lake or its landing zone does not exist (LakeNotFoundError).
    """
    check_deleted(deleted, "ingest()")
    lake = open_lake(lake_url)
    listing = lake.list()
    data_dir = Path(data_dir)
    manifest_path = data_dir / MANIFEST
    manifest = _present(data_dir, read_manifest(manifest_path))
    _remove_stale_tmp(data_dir)
    plan = plan_ingest(listing, manifest, _landed(data_dir))

    data_dir.mkdir(parents=True, exist_ok=True)
    copied_bytes = 0
    removed: list[str] = []
    written = False
    try:
        for relpath in plan.to_copy:
            _copy_atomic(lake, relpath, data_dir / relpath)
            # the listing's info, taken before the copy: if the object changed meanwhile, the
            # next run sees a different version and copies it again
            manifest[relpath] = listing[relpath]
            copied_bytes += listing[relpath].size
        if deleted == MIRROR:
            for relpath in plan.missing:
                _remove(data_dir, relpath)
                manifest.pop(relpath, None)
                removed.append(relpath)
    finally:
        # record what did arrive, so an interrupted run is resumed rather than redone
        written = write_manifest(manifest_path, manifest)
    return IngestReport(
        plan,
        copied_bytes,
        data_dir,
        manifest,
        manifest_written=written,
        deleted=deleted,
        removed=tuple(removed),
    )


# --- DVC ----------------------------------------------------------------------------------------


def dvc_executable() -> str:
    """The `dvc` installed beside this Python (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "dvc"
    if beside.is_file():
        return str(beside)
    found = shutil.which("dvc")
    if found is None:
        raise FileNotFoundError(f"dvc: not found beside {sys.executable} nor on PATH")
    return found


def record_snapshot(data_dir: str | Path) -> Path:
    """Run `dvc add <data_dir>` in the current directory (the repo root); return `<data>.dvc`."""
    data_dir = str(data_dir).rstrip("/")
    result = subprocess.run(
        [dvc_executable(), "add", data_dir], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"`dvc add {data_dir}` failed (exit {result.returncode}) in {Path.cwd()}:\n"
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return dvc_file(data_dir)


def dvc_file(data_dir: str | Path) -> Path:
    """The `.dvc` file `dvc add` writes for `data_dir` (`data` -> `data.dvc`)."""
    return Path(f"{str(data_dir).rstrip('/')}.dvc")


def deleted_policy(params_path: str | Path) -> str:
    """`ingest.deleted` from the params file (`mirror` when the file or the key is absent)."""
    if not Path(params_path).is_file():
        return MIRROR
    raw = load_params(params_path).get("ingest") or {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{params_path}: 'ingest' must be a mapping, got {type(raw).__name__}")
    return check_deleted(raw.get("deleted", MIRROR), str(params_path))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evergreen ingest",
        description="Copy new or changed lake objects into data/ and record data.dvc.",
    )
    parser.add_argument("--lake", help="lake folder or s3://bucket/prefix (default: lake.path)")
    parser.add_argument("--data", default="data", help="where the landing zone is mirrored")
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (for lake.path)")
    parser.add_argument("--no-dvc", action="store_true", help="do not run `dvc add`")
    parser.add_argument(
        "--deleted",
        choices=DELETED_POLICIES,
        help="objects gone from the lake: mirror (remove from data/) or keep (default: "
        f"ingest.deleted in params, else {MIRROR})",
    )
    args = parser.parse_args(argv)

    try:
        lake_url = default_lake(args.lake, args.params)
        deleted = args.deleted or deleted_policy(args.params)
        report = ingest(lake_url, args.data, deleted=deleted)
    except (LakeNotFoundError, ValueError) as e:  # ParamsError too: one line naming the file
        print(f"evergreen ingest: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    if report.plan.missing:
        missing = report.plan.missing
        shown = ", ".join(missing[:5]) + (
            f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        )
        if report.removed:
            print(
                f"removed {len(missing)} object(s) from {args.data}/ that are no longer in the "
                f"lake {lake_url} (ingest.deleted: {MIRROR}): {shown}"
            )
        else:
            print(
                f"warning: {len(missing)} objects in {args.data}/ are no longer in the lake "
                f"{lake_url}; kept (ingest.deleted: {KEEP}): {shown}",
                file=sys.stderr,
            )
    dvc_path = dvc_file(args.data)
    # data/ unchanged and already recorded: skipping `dvc add` keeps data.dvc byte-identical
    if not args.no_dvc and (report.data_changed or not dvc_path.exists()):
        try:
            record_snapshot(args.data)
        except (RuntimeError, FileNotFoundError) as e:
            print(f"evergreen ingest: {e}", file=sys.stderr)
            return 1
        print(f"recorded {dvc_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
