"""Bookkeeping for the stages that work partition by partition (validate, prepare).

Such a stage keeps a manifest in its persisted output directory: the content hash of what each
output was computed from, and the size + md5 of what it wrote. It writes its outputs first and
the manifest last, each atomically (temporary file, then rename), so after a crash at any point
every file at a final name is complete, and the manifest describes only outputs that were fully
written; an output that differs from the manifest (written after it) is recomputed. The manifest
also records a fingerprint of the code, params and libraries that produced it: a different
fingerprint means a rebuild from scratch.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from stages.contract.card import file_md5
from stages.lib.io import write_bytes_atomic

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# stages/contract/storage.py writes `<dir>/.<name>.tmp-<pid>` and renames it: a crash can leave
# one behind
TEMP_GLOB = ".*.tmp-*"
# A file modified this recently could change again within the same mtime tick without its stat
# changing ("racy git"): its md5 is not cached, so the next run reads it again.
RACY_NS = 2_000_000_000
CHUNK = 1 << 20
# where a stage's CODE_FILES are relative to
STAGES_ROOT = Path(__file__).resolve().parents[1]
# the library an incremental stage (validate, prepare) runs besides its own two modules: with
# them, exactly its code deps in dvc.yaml (tested); an edit to any of it rebuilds every output
SHARED_CODE = (
    "lib/dataset.py",
    "lib/io.py",
    "lib/incremental.py",
    "lib/engine.py",
    "contract/card.py",
    "contract/storage.py",
)


@dataclass(frozen=True)
class Stamp:
    """What identifies a file's content: its size and md5."""

    size: int
    md5: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "md5": self.md5}


class StatCache:
    """md5 of files, reusing a previous run's value while (size, mtime, inode) are unchanged.

    Only the files looked up in this run are kept, so the cache never outgrows the data.
    """

    def __init__(self, previous: Mapping[str, Any] | None = None) -> None:
        self._previous = dict(previous or {})
        self._current: dict[str, list[Any]] = {}

    def stamp(self, path: Path, label: str) -> Stamp | None:
        """The file's stamp (None if it does not exist); `label` names it in the cache."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        stat = [st.st_size, st.st_mtime_ns, st.st_ino]
        cached = self._previous.get(label)
        if isinstance(cached, list) and len(cached) == 4 and cached[:3] == stat:
            md5 = str(cached[3])
        else:
            md5 = file_md5(path)
        if time.time_ns() - st.st_mtime_ns > RACY_NS:
            self._current[label] = [*stat, md5]
        return Stamp(st.st_size, md5)

    def to_json(self) -> dict[str, list[Any]]:
        return dict(sorted(self._current.items()))


def content_hash(stamps: Mapping[str, Stamp]) -> str:
    """One hash for a set of named files: sorted names, sizes and md5s."""
    rows = [[name, s.size, s.md5] for name, s in sorted(stamps.items())]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def fingerprint(
    *, code: Iterable[Path], params: Mapping[str, Any], libraries: Iterable[str], version: int
) -> str:
    """What produced a stage's outputs: its code files, its params, library versions.

    The code is hashed whole (not a version number someone must remember to bump): any edit to a
    stage's modules rebuilds its outputs from scratch, which DVC would rerun the stage for anyway.
    """
    digest = hashlib.sha256()
    head = {
        "version": version,
        "params": params,
        "libraries": {name: metadata.version(name) for name in sorted(libraries)},
    }
    digest.update(json.dumps(head, sort_keys=True, default=str).encode())
    for path in sorted(code, key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def read_manifest(path: Path, expected_fingerprint: str) -> tuple[dict[str, Any] | None, str]:
    """(manifest, why not) — None with the reason when it is missing, unreadable or stale."""
    if not path.is_file():
        return None, "no manifest: building from scratch"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"{path}: unreadable manifest ({exc}): rebuilding from scratch"
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None, f"{path}: not a format-{MANIFEST_FORMAT} manifest: rebuilding from scratch"
    if manifest.get("fingerprint") != expected_fingerprint:
        return None, "code, params or library versions changed: rebuilding from scratch"
    return manifest, ""


def write_manifest(path: Path, fingerprint_: str, body: Mapping[str, Any]) -> None:
    """Write the manifest last: it commits every output written before it.

    Keys keep the order the stage built them in (deterministic), not sorted: a summary read
    back must equal the fresh one, order of its top failing checks included.
    """
    manifest = {"format": MANIFEST_FORMAT, "fingerprint": fingerprint_, **body}
    write_bytes_atomic((json.dumps(manifest, indent=1) + "\n").encode(), path)


def stat_cache_path(out_dir: Path) -> Path:
    """Beside the output directory, not in it: sizes, mtimes and inodes differ from machine to
    machine, and DVC would hash them into the output (and git into dvc.lock)."""
    return out_dir.parent / f".{out_dir.name}.stat-cache.json"


def load_stat_cache(out_dir: Path) -> StatCache:
    """The previous run's stat cache; an unreadable one is no cache (every file is hashed)."""
    path = stat_cache_path(out_dir)
    remove_temp_siblings(path)
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return StatCache()
    return StatCache(entries if isinstance(entries, dict) else None)


def save_stat_cache(out_dir: Path, cache: StatCache) -> None:
    write_bytes_atomic((json.dumps(cache.to_json()) + "\n").encode(), stat_cache_path(out_dir))


def remove_temp_files(*roots: Path) -> list[Path]:
    """Delete temporary files a killed run left under `roots` (they are never read)."""
    removed = []
    for root in roots:
        if not root.is_dir():
            continue
        for tmp in root.rglob(TEMP_GLOB):
            if tmp.is_file():
                tmp.unlink()
                removed.append(tmp)
    return removed


def remove_temp_siblings(path: Path) -> None:
    """Delete `path`'s own temporary files (for a file written outside an output directory)."""
    if path.parent.is_dir():
        for tmp in path.parent.glob(f".{path.name}.tmp-*"):
            tmp.unlink(missing_ok=True)
