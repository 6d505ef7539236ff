from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import re
import shutil
import subprocess
from fractions import Fraction

import numpy as np
import pytest
import skops.io as sio
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from stages.contract.feature_schema import REGRESSION
from stages.lib.model_io import TRUSTED_TYPES, UntrustedModelError, load_model, save_model
from stages.lib.training import REGRESSORS, ModelConfig, train_model
from tests.stages.test_train import MODELS, SCHEMA, make_frame


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    return x, (x[:, 0] + rng.normal(scale=0.5, size=200) > 0).astype(int)


@pytest.mark.parametrize(
    "estimator", [LogisticRegression(), HistGradientBoostingClassifier(max_iter=20, random_state=0)]
)
def test_saved_model_round_trips_with_identical_bytes(tmp_path, estimator):
    x, y = _data()
    model = make_pipeline(StandardScaler(), estimator).fit(x, y)
    first = save_model(model, tmp_path / "a.skops").read_bytes()
    second = save_model(model, tmp_path / "b.skops").read_bytes()
    assert first == second
    loaded = load_model(tmp_path / "a.skops")
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))


def test_load_refuses_missing_file_and_untrusted_types(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.skops"):
        load_model(tmp_path / "nope.skops")
    path = tmp_path / "odd.skops"
    sio.dump({"f": np.float64(1.0), "frac": Fraction(1, 3)}, path)
    with pytest.raises(ValueError, match="types no model family produces"):
        load_model(path)


# what a hostile model file could name; each must be refused before anything is constructed
HOSTILE = [
    ({"f": exec}, "builtins.exec"),
    ({"f": eval}, "builtins.eval"),
    ({"f": os.system}, f"{os.system.__module__}.system"),
    ({"f": subprocess.Popen}, "subprocess.Popen"),
    ({"f": importlib.import_module}, "importlib.import_module"),
    ({"f": shutil.rmtree}, "shutil.rmtree"),
]


@pytest.mark.parametrize(("payload", "type_name"), HOSTILE, ids=[t for _, t in HOSTILE])
def test_a_file_naming_a_callable_no_family_produces_is_refused(tmp_path, payload, type_name):
    path = tmp_path / "model.skops"
    path.write_bytes(sio.dumps(payload))
    assert sio.get_untrusted_types(file=path) == [type_name]
    with pytest.raises(UntrustedModelError, match=re.escape(type_name)):
        load_model(path)


def test_every_family_loads_and_the_trusted_list_is_exactly_what_they_need(tmp_path):
    frame = make_frame()
    needed: set[str] = set()
    for name, cfg in MODELS.items():
        path = save_model(train_model(frame, SCHEMA, cfg, seed=1), tmp_path / f"{name}.skops")
        needed |= set(sio.get_untrusted_types(file=path))
        load_model(path)
    regression = dataclasses.replace(SCHEMA, label="y", task=REGRESSION)
    for estimator in REGRESSORS:
        cfg = ModelConfig(estimator, estimator, {})
        model = train_model(frame.assign(y=frame.tenure * 2.0), regression, cfg, seed=1)
        path = save_model(model, tmp_path / f"{estimator}-regressor.skops")
        needed |= set(sio.get_untrusted_types(file=path))
        load_model(path)
    assert needed == TRUSTED_TYPES


def test_a_file_whose_md5_is_not_the_recorded_one_is_not_read(tmp_path):
    x, y = _data()
    path = save_model(LogisticRegression().fit(x, y), tmp_path / "m.skops")
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    assert load_model(path, expected_md5=md5) is not None
    with pytest.raises(UntrustedModelError, match=f"not the {'0' * 32} its commit records"):
        load_model(path, expected_md5="0" * 32)
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a skops model file"):
        load_model(path)
