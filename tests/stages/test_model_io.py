from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import skops.io as sio
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from stages.model_io import load_model, save_model


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
    with pytest.raises(ValueError, match="untrusted types"):
        load_model(path)
