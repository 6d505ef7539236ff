"""Retrain policies: when the training pipeline runs (`retrain:` in conf/config.yaml).

The daily prediction run never trains. A policy decides, each day, whether the training run
follows it; production follows `retrain.policy`, and `evergreen backtest` replays every policy
of `retrain.policies` over a lake's history to show which one a dataset needs.

A policy combines, each optional:
- `every_days: N`: a schedule, N days after the last training;
- `monitor: true`: when the monitor recommends retraining (its reasons are effect size and
  significance: README "How the monitor decides"), but not within `min_gap_days` of the last
  training, since a model just trained cannot have drifted yet and its labels have not matured;
- neither: `never` (the first model is the only one).
With no model in production, every policy trains: there is nothing to score with.

A config mistake is one line naming `retrain.<key>`, like every other params error.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

POLICY_KEYS = ("every_days", "monitor", "min_gap_days")


class PolicyError(ValueError):
    """A retrain policy the config gets wrong; the message is one line naming the key."""


@dataclass(frozen=True)
class Decision:
    train: bool
    reason: str


@dataclass(frozen=True)
class Policy:
    name: str
    every_days: int | None = None
    monitor: bool = False
    min_gap_days: int = 0

    def decide(
        self, today: dt.date, last_trained: dt.date | None, monitor_recommends: bool
    ) -> Decision:
        """Whether the training run follows today's prediction run, and why (one phrase)."""
        if last_trained is None:
            return Decision(True, "no model in production")
        age = (today - last_trained).days
        if self.every_days is not None and age >= self.every_days:
            return Decision(True, f"schedule: {age} days since the last training")
        if self.monitor and monitor_recommends:
            if age >= self.min_gap_days:
                return Decision(True, "the monitor recommends retraining")
            return Decision(
                False,
                f"the monitor recommends retraining, but the last training was {age} day(s) "
                f"ago (min_gap_days {self.min_gap_days})",
            )
        if self.every_days is not None:
            return Decision(False, f"schedule: next training in {self.every_days - age} day(s)")
        if self.monitor:
            return Decision(False, "the monitor sees no reason to retrain")
        return Decision(False, "policy never retrains")


def last_training(trained: dt.date | None, attempt: dt.date | None) -> dt.date | None:
    """The date a policy's clock runs from: the later of the champion's training and the last
    training run a decision started. A challenger the gate refused (or whose review waits) is
    not the model in production, yet its run must not be retried on one more day of data at
    every step the monitor still recommends. None without a champion (train, whatever ran)."""
    if trained is None or attempt is None:
        return trained
    return max(trained, attempt)


def _int(raw: Any, key: str, minimum: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < minimum:
        raise PolicyError(f"retrain.{key}: expected an integer >= {minimum}, got {raw!r}")
    return raw


def policy_from_params(name: str, raw: Any) -> Policy:
    key = f"policies.{name}"
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise PolicyError(f"retrain.{key}: expected a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(POLICY_KEYS))
    if unknown:
        raise PolicyError(f"retrain.{key}.{unknown[0]}: expected one of {', '.join(POLICY_KEYS)}")
    every = raw.get("every_days")
    monitor = raw.get("monitor", False)
    if not isinstance(monitor, bool):
        raise PolicyError(f"retrain.{key}.monitor: expected true or false, got {monitor!r}")
    return Policy(
        name=name,
        every_days=None if every is None else _int(every, f"{key}.every_days", 1),
        monitor=monitor,
        min_gap_days=_int(raw.get("min_gap_days", 0), f"{key}.min_gap_days", 0),
    )


def policies_from_params(params: Mapping[str, Any]) -> dict[str, Policy]:
    """Every policy of `retrain.policies`, by name, in the config's order."""
    section = params.get("retrain")
    if not isinstance(section, Mapping):
        raise PolicyError("retrain: expected a mapping with `policy` and `policies`")
    raw = section.get("policies")
    if not isinstance(raw, Mapping) or not raw:
        raise PolicyError("retrain.policies: expected a mapping of policy names to settings")
    return {str(name): policy_from_params(str(name), spec) for name, spec in raw.items()}


def production_policy(params: Mapping[str, Any]) -> Policy:
    """The policy production follows: `retrain.policy`, one of `retrain.policies`."""
    policies = policies_from_params(params)
    name = params["retrain"].get("policy")
    if name not in policies:
        raise PolicyError(f"retrain.policy: expected one of {', '.join(policies)}, got {name!r}")
    return policies[name]
