"""Server settings: conf/serve/default.yaml composed into params.yaml, then env, then flags."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve.settings import ServeSettings, SettingsError, api_key, load_settings
from tests.serve.artifacts import settings_file

ROOT = Path(__file__).resolve().parents[2]


def test_the_composed_params_give_every_setting(shop_params: dict) -> None:
    # the conf/ group is the one source: every key present, nothing unknown, valid as composed
    assert set(shop_params["serve"]) == set(ServeSettings.model_fields)
    settings = load_settings(ROOT / "params.yaml", {})
    assert settings.threshold == shop_params["evaluate"]["threshold"]
    assert settings.host == "127.0.0.1" and settings.port == 8000
    # relative paths are relative to the settings file
    assert settings.model == ROOT / "models/champion/model.onnx"
    assert settings.predictions_path == str(ROOT / "logs/predictions")


def test_environment_overrides_the_file_and_flags_override_both(tmp_path: Path) -> None:
    path = settings_file(tmp_path / "s.yaml", port=8100, workers=1, shadow_model=None)
    env = {
        "EVERGREEN_SERVE_PORT": "8200",
        "EVERGREEN_SERVE_WORKERS": "2",
        "EVERGREEN_SERVE_MODEL_NAME": "yes",  # text stays text (YAML would read a bool)
        "EVERGREEN_SERVE_PREDICTIONS_PATH": "null",
        "EVERGREEN_SERVE_ACCESS_LOG": "true",
        "EVERGREEN_SERVE_MODEL": "relative/m.onnx",
    }
    settings = load_settings(path, env, {"port": 8300, "workers": None})
    assert settings.port == 8300  # flag
    assert settings.workers == 2  # environment (the flag was not given)
    assert settings.model_name == "yes"
    assert settings.predictions_path is None
    assert settings.access_log is True
    assert settings.model == Path("relative/m.onnx")  # from the environment: as given


@pytest.mark.parametrize(
    ("overrides", "env", "message"),
    [
        ({"port": 80}, {}, r"port: .*greater than or equal to 1024 \(from command line\)"),
        ({}, {"EVERGREEN_SERVE_WORKERS": "two"}, r"workers: .* \(from environment EVERGREEN_"),
        ({}, {"EVERGREEN_SERVE_HOST": "10.0.0.1"}, r"host: .*'127.0.0.1'"),
        ({"shadow_model": "s.onnx"}, {}, "shadow_model and shadow_card go together"),
        (
            {},
            {"EVERGREEN_SERVE_PREDICTIONS_PATH": "gs://bucket/logs"},
            r"predictions_path: .*'gs://bucket/logs': expected a local folder or s3://",
        ),
        ({}, {"EVERGREEN_SERVE_PREDICTIONS_PATH": "s3:///logs"}, "predictions_path: .*s3://"),
        (
            {},
            {"EVERGREEN_SERVE_REQUEST_BODY_TIMEOUT": "0"},
            r"request_body_timeout: Input should be greater than 0 \(from environment",
        ),
    ],
)
def test_a_bad_setting_is_refused_naming_key_and_source(
    tmp_path: Path, overrides: dict, env: dict, message: str
) -> None:
    path = settings_file(tmp_path / "s.yaml")
    with pytest.raises(SettingsError, match=message):
        load_settings(path, env, overrides)


def test_a_settings_file_must_hold_every_key_and_only_known_ones(tmp_path: Path) -> None:
    path = settings_file(tmp_path / "s.yaml")
    serve = yaml.safe_load(path.read_text())["serve"]
    del serve["max_records"]
    serve["max_recrods"] = 5
    path.write_text(yaml.safe_dump({"serve": serve}))
    with pytest.raises(SettingsError, match=r"max_records: Field required.*max_recrods: Extra"):
        load_settings(path, {})
    other = tmp_path / "other.yaml"
    other.write_text("seed: 7\n")
    with pytest.raises(SettingsError, match="no 'serve' section"):
        load_settings(other, {})
    with pytest.raises(SettingsError, match="settings file not found"):
        load_settings(tmp_path / "missing.yaml", {})


def test_an_s3_log_path_is_accepted_without_opening_it(tmp_path: Path) -> None:
    # no network here: the bucket's region is looked up by each worker's log writer
    path = settings_file(tmp_path / "s.yaml")
    env = {"EVERGREEN_SERVE_PREDICTIONS_PATH": "s3://evergreen-logs/serve?region=eu-west-1"}
    assert load_settings(path, env).predictions_path == env["EVERGREEN_SERVE_PREDICTIONS_PATH"]
    assert load_settings(path, {}).request_header_timeout == 10.0  # conf/serve/default.yaml


def test_api_key_from_environment_or_file(tmp_path: Path) -> None:
    assert api_key({}) is None
    assert api_key({"EVERGREEN_API_KEY": " k1 "}) == "k1"
    secret = tmp_path / "key"
    secret.write_text("k2\n")
    assert api_key({"EVERGREEN_API_KEY_FILE": str(secret)}) == "k2"
    with pytest.raises(SettingsError, match="empty"):
        api_key({"EVERGREEN_API_KEY": "  "})
    with pytest.raises(SettingsError, match="not both"):
        api_key({"EVERGREEN_API_KEY": "a", "EVERGREEN_API_KEY_FILE": str(secret)})
    with pytest.raises(SettingsError, match="cannot read"):
        api_key({"EVERGREEN_API_KEY_FILE": str(tmp_path / "nope")})


def test_direct_is_the_default_mode_and_refuses_cross_request_batching(tmp_path: Path) -> None:
    path = settings_file(tmp_path / "s.yaml")
    direct = load_settings(path, {})
    assert direct.mode == "direct" and direct.scoring_processes == direct.api_servers == 2
    one = load_settings(path, {"EVERGREEN_SERVE_API_SERVERS": "null"})
    assert one.scoring_processes == direct.workers == 1  # null: as many as workers
    queued = load_settings(path, {"EVERGREEN_SERVE_MODE": "queued"}, {"max_batch_size": 8})
    assert queued.mode == "queued" and queued.scoring_processes == queued.workers == 1
    with pytest.raises(SettingsError, match=r"max_batch_size 8 batches .* set mode: queued"):
        load_settings(path, {"EVERGREEN_SERVE_MAX_BATCH_SIZE": "8"})
    with pytest.raises(SettingsError, match=r"mode: Input should be 'direct' or 'queued'"):
        load_settings(path, {"EVERGREEN_SERVE_MODE": "fast"})
