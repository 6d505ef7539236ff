"""`evergreen serve` before any server starts: refusals with a message, signal handling."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from serve.app import PredictAPI, interrupt_on
from serve.schema import api_models
from serve.settings import load_settings
from serve.sink import Counters
from stages.cli import main as cli_main
from tests.serve.artifacts import Artifacts, settings_file, write_model


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    return write_model(tmp_path_factory.mktemp("model"))


def serve(*args: str) -> int:
    return cli_main(["serve", *args])  # through the `evergreen` dispatcher


def test_a_missing_model_or_card_is_refused_naming_the_file(
    artifacts: Artifacts, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    settings = str(settings_file(tmp_path / "s.yaml"))
    missing = tmp_path / "nope.onnx"
    assert (
        serve("--settings", settings, "--card", str(artifacts.card), "--model", str(missing)) == 2
    )
    assert f"{missing}: ONNX model not found" in capsys.readouterr().err
    assert serve("--settings", settings, "--model", str(artifacts.onnx), "--card", "x.json") == 2
    assert "x.json: model card not found" in capsys.readouterr().err


def test_bad_settings_and_a_mismatched_shadow_are_refused(
    artifacts: Artifacts, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    settings = str(settings_file(tmp_path / "s.yaml"))
    files = ["--model", str(artifacts.onnx), "--card", str(artifacts.card)]
    assert serve("--settings", settings, *files, "--port", "80") == 2
    assert "port: Input should be greater than or equal to 1024" in capsys.readouterr().err
    card = json.loads(artifacts.card.read_text())
    card["features"]["categorical"][0]["name"] = "country"
    card["features"]["order"][-1] = "country"
    card.pop("onnx")
    other = tmp_path / "other_card.json"
    other.write_text(json.dumps(card))
    # the shadow's card and graph disagree (its graph wants `plan`): refused before serving
    shadow = ["--shadow-model", str(artifacts.onnx), "--shadow-card", str(other)]
    assert serve("--settings", settings, *files, *shadow) == 2
    assert "inputs do not match the feature schema" in capsys.readouterr().err
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVERGREEN_API_KEY", " ")
        assert serve("--settings", settings, *files) == 2
    assert "the API key is empty" in capsys.readouterr().err


def test_interrupt_on_raises_in_owner_and_kills_forked_children() -> None:
    calls: list[int] = []
    previous = interrupt_on([signal.SIGTERM], on_signal=lambda: calls.append(os.getpid()))
    try:
        child = os.fork()
        if child == 0:  # a forked child (as uvicorn's) must die by the signal, not raise
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
            finally:
                os._exit(3)  # reached only if the signal did not kill it
        _, status = os.waitpid(child, 0)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs between bytecodes; this is never reached in full
    finally:
        signal.signal(signal.SIGTERM, previous[signal.SIGTERM])
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    assert calls == [os.getpid()]  # told first (the worker monitor stops), in the owner only


def test_the_api_scores_batches_and_survives_a_failing_shadow(
    artifacts: Artifacts, tmp_path: Path
) -> None:
    shadow = write_model(tmp_path / "shadow", seed=4, name="shadow", stamped=False)
    path = settings_file(
        tmp_path / "s.yaml",
        model=str(artifacts.onnx),
        card=str(artifacts.card),
        shadow_model=str(shadow.onnx),
        shadow_card=str(shadow.card),
        predictions_path=str(tmp_path / "logs"),
    )
    counters = Counters()
    api = PredictAPI(load_settings(path, {}), key=None, counters=counters)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        api.setup("cpu")  # in this process, as a LitServe worker would (it sets SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    models = api_models(api.model.schema, 10)
    wires = [
        models.parse(json.dumps(body).encode())
        for body in (
            {"customer_id": 1, "days_since_last_order": 3.0, "orders_28d": 1, "plan": "basic"},
            {"records": [{"customer_id": 2, "days_since_last_order": None, "orders_28d": None,
                          "plan": None}] * 2},
        )
    ]  # fmt: skip
    batched = api.predict(wires)  # what LitServe hands over with max_batch_size > 1
    alone = [api.predict(w) for w in wires]
    for together, single in zip(batched, alone, strict=True):
        np.testing.assert_array_equal(together.scores, single.scores)
        assert together.shadow_scores is not None and len(together.shadow_scores) == len(
            single.wire
        )
    # a shadow that breaks is counted and logged; the champion's answer is unchanged
    api.shadow_feed = replace(api.shadow_feed, categorical=(("plan", 5),))
    broken = api.predict(wires[1])
    assert broken.shadow_scores is None
    np.testing.assert_array_equal(broken.scores, alone[1].scores)
    body = json.loads(api.encode_response(broken).body)
    assert [p["customer_id"] for p in body["predictions"]] == [2, 2]
    assert counters.snapshot()["shadow_errors"] == 2
    api.sink.close()
    assert counters.snapshot()["written"] == 2
