"""A small torch MLP for tabular data, as a scikit-learn classifier.

It is the final step of the same Pipeline as every other family (`build_preprocessor` does the
imputation, scaling and one-hot encoding), so it only ever sees a dense float matrix.

Persistence without pickle: after `fit` the learned weights live on the estimator as numpy
arrays (`state_dict_`), never as torch objects, so skops saves it like any sklearn estimator and
loading a model file runs no torch code; predict computes the forward pass from those arrays.
torch itself is imported inside the methods that need it: stages that never train or score an
MLP (and the ONNX server) never import it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted


class TabularMLPClassifier(ClassifierMixin, BaseEstimator):
    """Binary classifier: Linear -> ReLU -> Dropout blocks, then one logit and a sigmoid.

    Trained with AdamW on binary cross-entropy in mini-batches. With `eval_set` given to `fit`,
    it stops after `patience` epochs without a lower validation loss and keeps the weights of
    the best epoch. Deterministic on CPU: the same `random_state` gives the same weights.
    """

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (64, 32),
        dropout: float = 0.1,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        epochs: int = 50,
        batch_size: int = 256,
        patience: int = 5,
        random_state: int = 0,
        n_threads: int = 1,
    ) -> None:
        self.hidden_sizes = hidden_sizes
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.random_state = random_state
        self.n_threads = n_threads

    def _check_params(self) -> list[int]:
        hidden = [int(h) for h in self.hidden_sizes]
        problems = []
        if any(h < 1 for h in hidden):
            problems.append(f"hidden_sizes {list(self.hidden_sizes)} must all be >= 1")
        if not 0.0 <= float(self.dropout) < 1.0:
            problems.append(f"dropout {self.dropout} must be in [0, 1)")
        if float(self.learning_rate) <= 0.0:
            problems.append(f"learning_rate {self.learning_rate} must be > 0")
        if float(self.weight_decay) < 0.0:
            problems.append(f"weight_decay {self.weight_decay} must be >= 0")
        for name in ("epochs", "batch_size", "patience", "n_threads"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} {getattr(self, name)} must be >= 1")
        if problems:
            raise ValueError(f"{type(self).__name__}: {'; '.join(problems)}")
        return hidden

    def fit(
        self,
        X: Any,
        y: Any,
        *,
        eval_set: tuple[Any, Any] | None = None,
    ) -> TabularMLPClassifier:
        """Train on (X, y); `eval_set=(X_valid, y_valid)` turns on early stopping."""
        hidden = self._check_params()
        x = _as_matrix(X, "X")
        labels = np.asarray(y)
        classes = np.unique(labels)
        if len(classes) != 2:
            raise ValueError(
                f"{type(self).__name__}: y must hold exactly two classes, found {classes.tolist()}"
            )
        if len(labels) != len(x):
            raise ValueError(f"{type(self).__name__}: X has {len(x)} rows, y {len(labels)}")
        target = (labels == classes[1]).astype(np.float32)
        valid = None
        if eval_set is not None:
            x_valid = _as_matrix(eval_set[0], "eval_set X")
            if x_valid.shape[1] != x.shape[1]:
                raise ValueError(
                    f"{type(self).__name__}: eval_set has {x_valid.shape[1]} features, "
                    f"X has {x.shape[1]}"
                )
            valid = (x_valid, (np.asarray(eval_set[1]) == classes[1]).astype(np.float32))

        import torch

        seed = int(self.random_state)
        with _deterministic_torch(seed, int(self.n_threads)):
            net = _network(torch, x.shape[1], hidden, float(self.dropout))
            state, history = _train(torch, net, x, target, valid, self, seed)

        self.classes_ = classes
        self.n_features_in_ = x.shape[1]
        self.state_dict_ = state
        self.n_epochs_ = len(history)
        self.best_epoch_ = int(np.argmin(history)) + 1 if valid is not None else len(history)
        self.valid_loss_curve_ = np.asarray(history, dtype=np.float64)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (n_rows, 2), columns in `classes_` order."""
        check_is_fitted(self, "state_dict_")
        x = _as_matrix(X, "X")
        if x.shape[1] != self.n_features_in_:
            raise ValueError(
                f"{type(self).__name__}: X has {x.shape[1]} features, "
                f"the model was fitted on {self.n_features_in_}"
            )
        import torch

        with _fixed_threads(torch, int(self.n_threads)), torch.inference_mode():
            logit = _forward(torch, self.state_dict_, torch.from_numpy(x))
            positive = torch.sigmoid(logit).numpy()[:, 0]
        # 1 - p in float32, as the exported ONNX graph computes it
        return np.column_stack([1.0 - positive, positive]).astype(np.float64)

    def predict(self, X: Any) -> np.ndarray:
        """The class with the higher probability (the positive one above 0.5)."""
        proba = self.predict_proba(X)
        return self.classes_[(proba[:, 1] > 0.5).astype(np.int64)]


def _as_matrix(X: Any, what: str) -> np.ndarray:
    x = np.asarray(X, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"TabularMLPClassifier: {what} must be 2-D, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"TabularMLPClassifier: {what} holds NaN or inf (impute first)")
    return np.ascontiguousarray(x)


@contextlib.contextmanager
def _fixed_threads(torch: Any, threads: int) -> Iterator[None]:
    """A fixed thread count keeps float reductions in the same order run to run."""
    previous = torch.get_num_threads()
    if previous != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if previous != threads:
            torch.set_num_threads(previous)


@contextlib.contextmanager
def _deterministic_torch(seed: int, threads: int) -> Iterator[None]:
    """Seed, deterministic kernels and a fixed thread count, restoring torch's globals after."""
    import torch

    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    # fork_rng: seeding here must not change the random stream of the caller
    with torch.random.fork_rng(devices=[]), _fixed_threads(torch, threads):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous_deterministic)


def _network(torch: Any, n_in: int, hidden: list[int], dropout: float) -> Any:
    """Linear/ReLU/Dropout blocks then one output logit; parameter names index this list."""
    layers: list[Any] = []
    width = n_in
    for size in hidden:
        layers += [torch.nn.Linear(width, size), torch.nn.ReLU(), torch.nn.Dropout(dropout)]
        width = size
    layers.append(torch.nn.Linear(width, 1))
    return torch.nn.Sequential(*layers)


def linear_layers(state: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight [out, in], bias [out]) of each Linear layer of `_network`, input to output.

    Between two layers is a ReLU (dropout is the identity at inference); the last layer's one
    output is the logit. The ONNX export builds its graph from this list too.
    """
    indices = sorted({int(k.split(".")[0]) for k in state})
    return [(state[f"{i}.weight"], state[f"{i}.bias"]) for i in indices]


def _forward(torch: Any, state: dict[str, np.ndarray], x: Any) -> Any:
    """The network in eval mode from its weights: the same ops as the nn.Linear/ReLU stack,
    without building modules (which costs more than the forward pass on a few rows)."""
    layers = linear_layers(state)
    for i, (weight, bias) in enumerate(layers):
        x = torch.nn.functional.linear(x, torch.from_numpy(weight), torch.from_numpy(bias))
        if i < len(layers) - 1:
            x = torch.relu(x)
    return x


def _train(
    torch: Any,
    net: Any,
    x: np.ndarray,
    y: np.ndarray,
    valid: tuple[np.ndarray, np.ndarray] | None,
    cfg: TabularMLPClassifier,
    seed: int,
) -> tuple[dict[str, np.ndarray], list[float]]:
    """Mini-batch AdamW; returns the kept weights as numpy arrays and the loss per epoch."""
    # foreach: the same update as the default loop, batched over parameters (faster on CPU)
    optimizer = torch.optim.AdamW(
        net.parameters(),
        lr=float(cfg.learning_rate),
        weight_decay=float(cfg.weight_decay),
        foreach=True,
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    valid_t = (torch.from_numpy(valid[0]), torch.from_numpy(valid[1])) if valid else None
    # its own generator: the batch order depends on the seed only, not on dropout draws
    shuffle = torch.Generator().manual_seed(seed)
    batch = int(cfg.batch_size)
    best_loss, best_state, stale = float("inf"), _numpy_state(net), 0
    history: list[float] = []
    for _epoch in range(int(cfg.epochs)):
        net.train()
        order = torch.randperm(len(x_t), generator=shuffle)
        epoch_loss = 0.0
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            optimizer.zero_grad()
            loss = loss_fn(net(x_t[idx])[:, 0], y_t[idx])
            loss.backward()
            optimizer.step()
            epoch_loss += float(loss.detach()) * len(idx)
        if valid_t is None:
            history.append(epoch_loss / len(order))
            continue
        net.eval()
        with torch.no_grad():
            valid_loss = float(loss_fn(net(valid_t[0])[:, 0], valid_t[1]))
        history.append(valid_loss)
        if valid_loss < best_loss:
            best_loss, best_state, stale = valid_loss, _numpy_state(net), 0
        else:
            stale += 1
            if stale >= int(cfg.patience):
                break
    return (best_state if valid_t is not None else _numpy_state(net)), history


def _numpy_state(net: Any) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}
