"""`evergreen canary` against real servers started from a build context: the default (direct)
mode passes, a server running another mode than the context's settings fails, named."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from stages.cli import main as cli_main
from tests.serve.artifacts import settings_file, write_model
from tests.server_process import free_port, running_server

pytestmark = pytest.mark.slow


def test_the_canary_checks_the_mode_the_context_serves(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    champion = write_model(tmp_path / "models")
    settings = settings_file(
        tmp_path / "params.yaml", model=str(champion.onnx), card=str(champion.card)
    )
    context = tmp_path / "context"
    assert (
        cli_main(["serve", "build-context", "--settings", str(settings), "--out", str(context)])
        == 0
    )
    capsys.readouterr()
    # as the promote workflow runs it before a push: the server started from the context
    assert cli_main(["canary", "--context", str(context)]) == 0
    assert " mode direct, /predict score " in capsys.readouterr().out
    # an operator's override that makes the container serve another mode than the context says
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(context / "app"),
        "EVERGREEN_SERVE_SETTINGS": str(context / "model/serve.yaml"),
        "EVERGREEN_SERVE_HOST": "127.0.0.1",
        "EVERGREEN_SERVE_PORT": str(port),
        "EVERGREEN_SERVE_PREDICTIONS_PATH": str(tmp_path / "predictions"),
        "EVERGREEN_SERVE_MODE": "queued",
    }
    cmd = [sys.executable, "-m", "serve.app"]
    log = tmp_path / "server.log"
    with running_server(cmd, port, log, cwd=context / "app", env=env) as (url, _):
        assert cli_main(["canary", "--context", str(context), "--url", url]) == 1
    err = capsys.readouterr().err
    assert "canary: FAILED: /info server.mode is queued, expected direct" in err
