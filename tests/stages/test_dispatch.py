from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stages.cli.dispatch import main
from tests.conftest import ROOT


@pytest.fixture
def github():
    """A real HTTP server on 127.0.0.1 standing in for api.github.com; records requests."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(
                {"path": self.path, "headers": dict(self.headers), "json": json.loads(body)}
            )
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", received
    server.shutdown()
    server.server_close()


def _args(*extra):
    return ["--repo", "acme/churn", "--conf", str(ROOT / "conf"), *extra]


def test_dispatch_posts_the_workflow_dispatch_call(github, monkeypatch, capsys):
    url, received = github
    monkeypatch.setenv("GITHUB_API_URL", url)
    monkeypatch.setenv("EVERGREEN_GITHUB_TOKEN", "s3cret")
    assert main(_args("--set", "model=hgb", "--set", "seed=3")) == 0
    [req] = received
    assert req["path"] == "/repos/acme/churn/actions/workflows/retrain.yml/dispatches"
    assert req["headers"]["Authorization"] == "Bearer s3cret"
    assert req["json"] == {"ref": "main", "inputs": {"overrides": "model=hgb seed=3"}}
    assert "s3cret" not in capsys.readouterr().out


def test_dry_run_prints_the_request_without_sending_or_leaking(github, monkeypatch, capsys):
    url, received = github
    monkeypatch.setenv("GITHUB_API_URL", url)
    monkeypatch.setenv("GITHUB_TOKEN", "s3cret")
    assert main(_args("--dry-run", "--set", "model=hgb")) == 0
    printed = json.loads(capsys.readouterr().out)
    assert received == []
    assert printed["json"]["inputs"]["overrides"] == "model=hgb"
    assert printed["headers"]["Authorization"] == "Bearer ***"


@pytest.mark.parametrize("bad", ["model=nope", "seed=1;reboot", "no_such.key=1"])
def test_bad_overrides_send_nothing(github, monkeypatch, capsys, bad):
    url, received = github
    monkeypatch.setenv("GITHUB_API_URL", url)
    monkeypatch.setenv("GITHUB_TOKEN", "t")
    assert main(_args("--set", bad)) == 2
    assert received == [] and "evergreen dispatch:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("evaluate.threshold=2", "evaluate.threshold=2: evaluate.threshold: 2.0 is not in [0, 1]"),
        ("train.n_trials=-5", "override train.n_trials=-5: train.n_trials: -5 is not >= 0"),
        ("train.n_trials=" + "1" * 100_000, "train.n_trials's value is 100000 characters long"),
    ],
    ids=["threshold", "n_trials", "huge"],
)
def test_out_of_range_or_huge_overrides_are_one_line_and_send_nothing(
    github, monkeypatch, capsys, bad, message
):
    url, received = github
    monkeypatch.setenv("GITHUB_API_URL", url)
    monkeypatch.setenv("GITHUB_TOKEN", "t")
    assert main(_args("--set", bad)) == 2
    err = capsys.readouterr().err
    assert received == [] and err.startswith("evergreen dispatch: ") and message in err
    assert err.count("\n") == 1 and len(err) < 300, err[:300]


def test_missing_token_is_explained(monkeypatch, capsys):
    for var in ("GITHUB_TOKEN", "EVERGREEN_GITHUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    assert main(_args("--set", "model=hgb")) == 2
    assert "actions:write" in capsys.readouterr().err


def test_missing_conf_is_one_line(tmp_path, capsys):
    args = ["--repo", "acme/churn", "--conf", str(tmp_path / "nope"), "--set", "seed=3"]
    assert main([*args, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("evergreen dispatch: ") and "nope" in err and err.count("\n") == 1
