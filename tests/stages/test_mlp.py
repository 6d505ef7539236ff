from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import skops.io as sio
import torch

from stages.contract.feature_schema import FeatureSchema
from stages.lib.mlp import TabularMLPClassifier
from stages.lib.model_io import load_model, save_model

SMALL = {"hidden_sizes": [16, 8], "epochs": 20, "batch_size": 64, "learning_rate": 0.01}


def data(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    y = (x[:, 0] - 0.5 * x[:, 1] + rng.normal(scale=0.7, size=n) > 0).astype("int64")
    return x, y


def test_fits_and_predicts_probabilities() -> None:
    x, y = data()
    xv, yv = data(200, seed=1)
    mlp = TabularMLPClassifier(**SMALL, random_state=3).fit(x, y, eval_set=(xv, yv))
    proba = mlp.predict_proba(xv)
    assert proba.shape == (200, 2) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert list(mlp.classes_) == [0, 1]
    np.testing.assert_array_equal(mlp.predict(xv), (proba[:, 1] > 0.5).astype("int64"))
    # it learned the signal
    accuracy = (mlp.predict(xv) == yv).mean()
    assert accuracy > 0.75


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    x, y = data()
    xv, yv = data(200, seed=1)
    a = TabularMLPClassifier(**SMALL, random_state=5).fit(x, y, eval_set=(xv, yv))
    b = TabularMLPClassifier(**SMALL, random_state=5).fit(x, y, eval_set=(xv, yv))
    c = TabularMLPClassifier(**SMALL, random_state=6).fit(x, y, eval_set=(xv, yv))
    assert a.state_dict_.keys() == b.state_dict_.keys()
    for key in a.state_dict_:
        np.testing.assert_array_equal(a.state_dict_[key], b.state_dict_[key])
    np.testing.assert_array_equal(a.predict_proba(xv), b.predict_proba(xv))
    assert any(not np.array_equal(a.state_dict_[k], c.state_dict_[k]) for k in a.state_dict_)
    assert not np.array_equal(a.predict_proba(xv), c.predict_proba(xv))


def test_fit_leaves_torch_globals_as_it_found_them() -> None:
    x, y = data(100)
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    TabularMLPClassifier(**SMALL, random_state=1, n_threads=1).fit(x, y)
    # the caller's random stream continues as if fit had not run
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_early_stopping_keeps_the_best_epoch() -> None:
    x, y = data(300)
    xv, yv = data(300, seed=2)
    # a large learning rate on a small net overfits quickly: the valid loss turns up
    mlp = TabularMLPClassifier(
        hidden_sizes=[64], epochs=200, batch_size=32, learning_rate=0.05, patience=3
    ).fit(x, y, eval_set=(xv, yv))
    assert mlp.n_epochs_ < 200
    assert mlp.n_epochs_ == mlp.best_epoch_ + 3
    curve = mlp.valid_loss_curve_
    assert int(np.argmin(curve)) + 1 == mlp.best_epoch_
    # the kept weights are the best epoch's: their valid loss is the curve's minimum
    p = np.clip(mlp.predict_proba(xv)[:, 1], 1e-7, 1 - 1e-7)
    loss = -np.mean(yv * np.log(p) + (1 - yv) * np.log(1 - p))
    assert loss == pytest.approx(curve.min(), rel=1e-4)


def test_no_torch_objects_on_the_estimator_and_skops_round_trip(tmp_path) -> None:
    x, y = data(200)
    mlp = TabularMLPClassifier(**SMALL, random_state=2).fit(x, y)
    mlp.predict_proba(x)  # predicting must not cache a torch module on the estimator either

    def modules(value):
        if isinstance(value, dict):
            return {m for v in value.values() for m in modules(v)}
        if isinstance(value, list | tuple):
            return {m for v in value for m in modules(v)}
        return {type(value).__module__.split(".")[0]}

    assert "torch" not in modules(vars(mlp))
    path = save_model(mlp, tmp_path / "mlp.skops")
    assert sio.get_untrusted_types(file=path) == ["stages.lib.mlp.TabularMLPClassifier"]
    loaded = load_model(path)
    np.testing.assert_array_equal(loaded.predict_proba(x), mlp.predict_proba(x))
    assert save_model(loaded, tmp_path / "again.skops").read_bytes() == path.read_bytes()


def test_model_io_trusts_exactly_the_mlp_class_not_the_stages_package(tmp_path) -> None:
    path = tmp_path / "other.skops"
    schema = FeatureSchema("id", "t", "y", ("a",), ())
    sio.dump({"schema": schema}, path)
    with pytest.raises(
        ValueError, match=r"no model family produces.*stages\.contract\.feature_schema"
    ):
        load_model(path)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"dropout": 1.0}, "dropout 1.0"),
        ({"hidden_sizes": [8, 0]}, "hidden_sizes"),
        ({"epochs": 0}, "epochs 0"),
        ({"learning_rate": 0.0}, "learning_rate"),
    ],
)
def test_bad_hyperparameters_are_named(params: dict, message: str) -> None:
    x, y = data(50)
    with pytest.raises(ValueError, match=message):
        TabularMLPClassifier(**params).fit(x, y)


def test_bad_inputs_are_named() -> None:
    x, y = data(50)
    with pytest.raises(ValueError, match="two classes"):
        TabularMLPClassifier().fit(x, np.zeros(50))
    x_nan = x.copy()
    x_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        TabularMLPClassifier().fit(x_nan, y)
    mlp = TabularMLPClassifier(**SMALL).fit(x, y)
    with pytest.raises(ValueError, match=r"5 features.*fitted on 6"):
        mlp.predict_proba(x[:, :5])


def test_importing_the_module_does_not_import_torch() -> None:
    code = "import sys, stages.lib.mlp; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
