"""The server's settings: the `serve` section of a settings file, then environment, then flags.

The file is `params.yaml` in the repository (its `serve` section is `conf/serve/default.yaml`,
composed by `evergreen params`) and `serve.yaml` in the image (written by
`evergreen serve build-context`). Relative paths in the file are relative to the file. Each key
can be overridden by the environment variable `EVERGREEN_SERVE_<KEY>` (upper case; values are
read as YAML scalars, `null` clears an optional key) and some by command-line flags.

The API key is never a setting: it comes from `EVERGREEN_API_KEY` or the file named by
`EVERGREEN_API_KEY_FILE` (a mounted secret), so it cannot end up in git or in an image layer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

SECTION = "serve"
ENV_PREFIX = "EVERGREEN_SERVE_"
SETTINGS_ENV = "EVERGREEN_SERVE_SETTINGS"
DEFAULT_SETTINGS = "params.yaml"
API_KEY_ENV = "EVERGREEN_API_KEY"
API_KEY_FILE_ENV = "EVERGREEN_API_KEY_FILE"
PATH_KEYS = ("model", "card", "shadow_model", "shadow_card")
# keys whose environment value is taken as text (not parsed as YAML: `yes` stays "yes")
TEXT_KEYS = (*PATH_KEYS, "model_name", "mode", "host", "log_level", "predictions_path")


class SettingsError(ValueError):
    """Unusable settings; the message names the key, its source and the expectation."""


class ServeSettings(BaseModel):
    """Every key of `conf/serve/default.yaml`; the file must give them all."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: Path
    card: Path
    model_name: str | None
    # direct: each API-server process validates, scores and encodes (serve/direct.py);
    # queued: API servers hand requests to inference workers through LitServe's queues
    mode: Literal["direct", "queued"]
    host: Literal["127.0.0.1", "0.0.0.0", "::"]
    port: int = Field(ge=1024, le=65535)
    workers: int = Field(ge=1, le=64)
    api_servers: int | None = Field(ge=1, le=64)
    max_batch_size: int = Field(ge=1, le=4096)
    batch_timeout: float = Field(ge=0.0, le=1.0)
    timeout: float = Field(gt=0.0)
    request_header_timeout: float = Field(gt=0.0, le=3600.0)
    request_body_timeout: float = Field(gt=0.0, le=3600.0)
    # at least two heartbeats (serve/health.py: every 0.5 s)
    worker_stall_timeout: float = Field(ge=1.0, le=3600.0)
    max_records: int = Field(ge=1, le=100_000)
    threshold: float = Field(ge=0.0, le=1.0)
    range_margin: float | None = Field(ge=0.0)
    log_level: Literal["debug", "info", "warning", "error"]
    access_log: bool
    predictions_path: str | None
    predictions_format: Literal["parquet", "jsonl"]
    predictions_max_queued: int = Field(ge=1)
    predictions_flush_records: int = Field(ge=1)
    predictions_flush_seconds: float = Field(gt=0.0)
    shadow_model: Path | None
    shadow_card: Path | None

    @field_validator("predictions_path")
    @classmethod
    def _log_destination(cls, path: str | None) -> str | None:
        # checked here, without any network: the destination itself is opened by each
        # worker's log writer (an S3 region lookup may fail or hang; it must not stop serving)
        if path is not None and "://" in path and not re.fullmatch(r"s3://[^/?#]+(/.*)?", path):
            raise ValueError(f"{path!r}: expected a local folder or s3://bucket/prefix")
        return path

    @model_validator(mode="after")
    def _shadow_pair(self) -> ServeSettings:
        if (self.shadow_model is None) != (self.shadow_card is None):
            raise ValueError("shadow_model and shadow_card go together: set both or neither")
        return self

    @model_validator(mode="after")
    def _batching_needs_workers(self) -> ServeSettings:
        # cross-request batching is done by LitServe's inference workers, which direct mode
        # does not start: accepting the setting there would silently do nothing
        if self.mode == "direct" and self.max_batch_size > 1:
            raise ValueError(
                f"max_batch_size {self.max_batch_size} batches across requests in inference "
                "workers: set mode: queued (direct mode scores each request as it comes)"
            )
        return self

    @property
    def scoring_processes(self) -> int:
        """Processes holding the model: the API servers in direct mode, else the workers."""
        if self.mode == "direct":
            return self.api_servers or self.workers
        return self.workers

    def public(self) -> dict[str, Any]:
        """The settings as /info shows them (paths as text)."""
        return self.model_dump(mode="json")


def _file_section(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SettingsError(
            f"{path}: settings file not found (run `evergreen params`, or pass --settings)"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML ({exc})") from exc
    section = raw.get(SECTION) if isinstance(raw, Mapping) else None
    if not isinstance(section, Mapping):
        raise SettingsError(f"{path}: no '{SECTION}' section (a mapping of server settings)")
    values = dict(section)
    base = path.resolve().parent
    for key in PATH_KEYS:
        if isinstance(values.get(key), str):
            values[key] = str(base / values[key])
    logs = values.get("predictions_path")
    if isinstance(logs, str) and "://" not in logs:
        values["predictions_path"] = str(base / logs)
    return values


def _env_value(key: str, text: str) -> Any:
    if text.strip().lower() in ("", "null", "~", "none"):
        return None
    if key in TEXT_KEYS:
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_settings(
    path: str | Path,
    env: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
) -> ServeSettings:
    """Settings from `path`'s `serve` section, then `env`, then `overrides` (None = not given)."""
    path = Path(path)
    values = _file_section(path)
    sources = dict.fromkeys(values, str(path))
    for key in ServeSettings.model_fields:
        name = f"{ENV_PREFIX}{key.upper()}"
        if name in env:
            values[key], sources[key] = _env_value(key, env[name]), f"environment {name}"
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key], sources[key] = value, "command line"
    try:
        return ServeSettings.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            key = ".".join(str(p) for p in err["loc"]) or "serve"
            where = sources.get(key, str(path))
            problems.append(f"{key}: {err['msg']} (from {where})")
        raise SettingsError(f"serve settings: {'; '.join(problems)}") from None


def api_key(env: Mapping[str, str]) -> str | None:
    """The API key from `EVERGREEN_API_KEY` or `EVERGREEN_API_KEY_FILE`; None = auth off."""
    key = env.get(API_KEY_ENV)
    file = env.get(API_KEY_FILE_ENV)
    if key is not None and file is not None:
        raise SettingsError(f"set {API_KEY_ENV} or {API_KEY_FILE_ENV}, not both")
    if file is not None:
        try:
            key = Path(file).read_text().strip()
        except OSError as exc:
            raise SettingsError(f"{API_KEY_FILE_ENV}={file}: cannot read the key ({exc})") from exc
    if key is None:
        return None
    if not key.strip():
        raise SettingsError(f"{API_KEY_ENV}: the API key is empty (unset it to turn auth off)")
    return key.strip()
