"""Lake simulator: write the simulated shop (`conf/dataset/shop.yaml`) as daily lake partitions.

`evergreen lake simulate --lake DIR|s3://bucket/prefix --start 2026-01-01 --days 120 --seed 7`
writes, for every simulated day d,

    <lake>/landing/customers/date=YYYY-MM-DD/part-0000.parquet   sign-ups and changed rows
    <lake>/landing/events/date=YYYY-MM-DD/part-0000.parquet      events, late arrivals, re-sends

and keeps its own state in `<lake>/_simulator/` (meta.json + state.npz) so a later run appends
the next days. Day d draws its randomness from `np.random.default_rng([seed, d])` and the state
is stored exactly, so N days in one run and N-1 days plus one appended day give the same bytes.

The shop has causal structure a model can learn: every customer has a latent engagement (some
drift downwards), and the daily churn hazard rises with falling engagement, support tickets,
refunds, the plan price and a recent price raise. Churned customers never produce events again.
From `drift_day` the regime changes: the `standard` plan's price rises (its customers' rows are
re-emitted), tickets hurt retention more, and the `partner` channel starts acquiring customers.

`--faults all|none|a,b` injects lake faults into the days written (see `FAULTS` and params
`simulate.faults`): nulls, out-of-range values, unknown categories, duplicate ids within a file
and a re-sent file, late events, a renamed column, a truncated file, an empty and a missing
day, timestamps in another time zone. They are applied to a day's finished tables from a random
stream of their own, so the shop and its state are the same with or without them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.contract.storage import Lake
from stages.lib.params import load_params, section

FORMAT_VERSION = 1
META_FILE = "_simulator/meta.json"
STATE_FILE = "_simulator/state.npz"
LANDING = "landing"
PART_FILE = "part-0000.parquet"

COUNTRIES = ("DE", "FR", "GB", "NL", "ES", "IT", "PL", "SE")
COUNTRY_WEIGHTS = (0.24, 0.18, 0.17, 0.08, 0.1, 0.1, 0.08, 0.05)
PLANS = ("basic", "standard", "premium")
PLAN_WEIGHTS = (0.5, 0.35, 0.15)
PLAN_PRICES = (9.99, 19.99, 39.99)
CHANNELS = ("organic", "ads", "referral", "partner")
CHANNEL_WEIGHTS = (0.5, 0.35, 0.15, 0.0)
CHANNEL_WEIGHTS_AFTER_DRIFT = (0.4, 0.25, 0.1, 0.25)
EVENT_TYPES = ("session", "order", "support_ticket", "refund")
ORDER, REFUND = EVENT_TYPES.index("order"), EVENT_TYPES.index("refund")

# The drift regime: one plan's list price rises, and tickets weigh more on the hazard.
RAISED_PLAN = PLANS.index("standard")
RAISED_PRICE = 24.99
PARTNER_DISCOUNT = 0.85
TICKET_HAZARD = 0.6
TICKET_HAZARD_AFTER_DRIFT = 1.0

MEAN_SESSION_RATE = 0.3
US_PER_DAY = 86_400 * 1_000_000
EPOCH = dt.date(1970, 1, 1)

EVENTS_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.int64(), nullable=False),
        pa.field("customer_id", pa.int64(), nullable=False),
        pa.field("event_time", pa.timestamp("us"), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("amount", pa.float64(), nullable=True),
    ]
)
CUSTOMERS_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.int64(), nullable=False),
        pa.field("signup_date", pa.date32(), nullable=False),
        pa.field("country", pa.string(), nullable=False),
        pa.field("plan", pa.string(), nullable=False),
        pa.field("channel", pa.string(), nullable=False),
        pa.field("monthly_price", pa.float64(), nullable=False),
        pa.field("updated_at", pa.timestamp("us"), nullable=False),
    ]
)


class LakeMismatchError(ValueError):
    """The lake's simulator state disagrees with the arguments (seed, start, knobs)."""


@dataclass(frozen=True)
class SimulateConfig:
    """The knobs of the simulated shop (params section `simulate`)."""

    initial_customers: int = 1500
    signups_per_day: float = 12
    drift_day: int = 75
    duplicate_rate: float = 0.01
    late_rate: float = 0.02

    def __post_init__(self) -> None:
        if self.initial_customers < 0 or self.signups_per_day < 0:
            raise ValueError("simulate: initial_customers and signups_per_day must be >= 0")
        for name in ("duplicate_rate", "late_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"simulate.{name}: must be in [0, 1], got {getattr(self, name)}")

    @classmethod
    def from_params(cls, raw: Mapping[str, Any]) -> SimulateConfig:
        """Build from the `simulate` params section; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known - {"faults"})  # faults: see FaultConfig
        if unknown:
            raise ValueError(f"params simulate: unknown keys {unknown} (known: {sorted(known)})")
        return cls(**{k: v for k, v in raw.items() if k != "faults"})

    def knobs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ShopState:
    """Everything a day needs from the days before it.

    Customer arrays are indexed by `customer_id - 1`. Pending arrays hold events generated on
    an earlier day that land in a later partition (late arrivals and re-sent duplicates).
    """

    next_day: int
    next_event_id: int
    signup_day: np.ndarray  # int32, day index (negative: before the start date)
    country: np.ndarray  # int8 codes into COUNTRIES
    plan: np.ndarray  # int8 codes into PLANS
    channel: np.ndarray  # int8 codes into CHANNELS
    price: np.ndarray  # float64 monthly price
    engagement: np.ndarray  # float64, log of the daily session rate
    target: np.ndarray  # float64, where engagement reverts to (drifts by `trend`)
    trend: np.ndarray  # float64 per day; < 0 for customers drifting away
    issue: np.ndarray  # float64 ticket proneness
    order_p: np.ndarray  # float64 chance that a session has an order
    loyalty: np.ndarray  # float64, unobserved: lowers the churn hazard
    frustration: np.ndarray  # float64 decayed count of tickets and refunds
    shock: np.ndarray  # float64 decayed price-raise shock
    pause: np.ndarray  # int16 days left of a break (holiday) with no activity
    alive: np.ndarray  # bool, False once churned (for good)
    pend_id: np.ndarray  # int64
    pend_customer: np.ndarray  # int64
    pend_time: np.ndarray  # int64 microseconds since the epoch
    pend_type: np.ndarray  # int8 codes into EVENT_TYPES
    pend_amount: np.ndarray  # float64, NaN for no amount
    pend_due: np.ndarray  # int32 day index of the partition the event lands in

    @property
    def n_customers(self) -> int:
        return int(self.signup_day.shape[0])


_CUSTOMER_DTYPES: dict[str, type] = {
    "signup_day": np.int32,
    "country": np.int8,
    "plan": np.int8,
    "channel": np.int8,
    "price": np.float64,
    "engagement": np.float64,
    "target": np.float64,
    "trend": np.float64,
    "issue": np.float64,
    "order_p": np.float64,
    "loyalty": np.float64,
    "frustration": np.float64,
    "shock": np.float64,
    "pause": np.int16,
    "alive": np.bool_,
}
_PENDING_DTYPES: dict[str, type] = {
    "pend_id": np.int64,
    "pend_customer": np.int64,
    "pend_time": np.int64,
    "pend_type": np.int8,
    "pend_amount": np.float64,
    "pend_due": np.int32,
}


def initial_state() -> ShopState:
    """The state before day 0: no customers, no pending events."""
    arrays = {k: np.zeros(0, dtype=t) for k, t in {**_CUSTOMER_DTYPES, **_PENDING_DTYPES}.items()}
    return ShopState(next_day=0, next_event_id=1, **arrays)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _list_prices(day: int, config: SimulateConfig) -> np.ndarray:
    prices = np.array(PLAN_PRICES)
    if day >= config.drift_day:
        prices[RAISED_PLAN] = RAISED_PRICE
    return prices


def _price(plan: np.ndarray, channel: np.ndarray, list_prices: np.ndarray) -> np.ndarray:
    discount = np.where(channel == CHANNELS.index("partner"), PARTNER_DISCOUNT, 1.0)
    return np.round(list_prices[plan] * discount, 2)


def _new_customers(
    rng: np.random.Generator, n: int, signup_day: np.ndarray, day: int, config: SimulateConfig
) -> dict[str, np.ndarray]:
    """Attributes and latent traits of `n` new customers."""
    weights = CHANNEL_WEIGHTS_AFTER_DRIFT if day >= config.drift_day else CHANNEL_WEIGHTS
    country = rng.choice(len(COUNTRIES), size=n, p=COUNTRY_WEIGHTS).astype(np.int8)
    plan = rng.choice(len(PLANS), size=n, p=PLAN_WEIGHTS).astype(np.int8)
    channel = rng.choice(len(CHANNELS), size=n, p=weights).astype(np.int8)
    # Channels and plans differ in how engaged their customers are, so they carry signal.
    channel_shift = np.array([0.1, -0.25, 0.3, -0.35])[channel]
    plan_shift = np.array([-0.1, 0.0, 0.25])[plan]
    target = np.log(MEAN_SESSION_RATE) + rng.normal(0.0, 0.7, n) + channel_shift + plan_shift
    falling = rng.random(n) < 0.15
    trend = np.where(falling, -rng.uniform(0.015, 0.06, n), 0.0)
    order_p = rng.beta(2.0, 12.0, n) * np.array([0.9, 1.0, 1.3])[plan]
    return {
        "signup_day": signup_day.astype(np.int32),
        "country": country,
        "plan": plan,
        "channel": channel,
        "price": _price(plan, channel, _list_prices(day, config)),
        "engagement": target + rng.normal(0.0, 0.2, n),
        "target": target,
        "trend": trend,
        "issue": rng.gamma(0.7, 1.0 / 0.7, n),
        "order_p": np.minimum(order_p, 0.9),
        # Churn is not fully explained by what the lake shows, as in a real shop.
        "loyalty": rng.normal(0.0, 0.7, n),
        "frustration": np.zeros(n),
        "shock": np.zeros(n),
        "pause": np.zeros(n, dtype=np.int16),
        "alive": np.ones(n, dtype=np.bool_),
    }


def _append(s: dict[str, np.ndarray], new: Mapping[str, np.ndarray]) -> None:
    for k, dtype in _CUSTOMER_DTYPES.items():
        s[k] = np.concatenate([s[k], new[k]]).astype(dtype)


def _amounts(rng: np.random.Generator, plan: np.ndarray) -> np.ndarray:
    raw = np.exp(rng.normal(3.4 + 0.3 * (plan == PLANS.index("premium")), 0.6))
    return np.round(np.clip(raw, 1.0, 5000.0), 2)


def _daily_events(
    rng: np.random.Generator, s: dict[str, np.ndarray], active: np.ndarray, day_us: int
) -> dict[str, np.ndarray]:
    """Sessions, orders, tickets and refunds of the `active` customers on one day."""
    rate = np.where(s["pause"][active] > 0, 0.0, np.exp(s["engagement"][active]))
    sessions = rng.poisson(rate)
    orders = rng.binomial(sessions, s["order_p"][active])
    tickets = rng.poisson(0.025 * s["issue"][active])
    frustration = s["frustration"][active]
    refunds = rng.binomial(orders, np.minimum(0.04 + 0.05 * frustration, 0.6))
    counts = np.stack([sessions, orders, tickets, refunds])  # (type, customer)
    etype = np.repeat(np.arange(4, dtype=np.int8), counts.sum(axis=1))
    who = np.concatenate([np.repeat(active, c) for c in counts])
    n = etype.shape[0]
    times = day_us + rng.integers(0, 86_400, n, dtype=np.int64) * 1_000_000
    amount = np.full(n, np.nan)
    has_amount = (etype == ORDER) | (etype == REFUND)
    amount[has_amount] = _amounts(rng, s["plan"][who[has_amount]])
    # Ids follow time so that, late arrivals aside, a partition's ids increase.
    by_time = np.lexsort((etype, who, times))
    # Tickets and refunds both frustrate; engagement also suffers from each ticket.
    s["frustration"][active] = frustration + tickets + refunds
    s["engagement"][active] -= 0.1 * tickets
    return {
        "customer": who[by_time].astype(np.int64) + 1,
        "time": times[by_time],
        "type": etype[by_time],
        "amount": amount[by_time],
    }


def _churn(
    rng: np.random.Generator,
    s: dict[str, np.ndarray],
    active: np.ndarray,
    day: int,
    config: SimulateConfig,
) -> None:
    """End-of-day churn of the `active` customers (in place on `s`)."""
    tenure = day - s["signup_day"][active]
    ticket_weight = TICKET_HAZARD_AFTER_DRIFT if day >= config.drift_day else TICKET_HAZARD
    channel_risk = np.array([0.0, 0.3, -0.3, 0.4])[s["channel"][active]]
    logit = (
        -6.9
        - s["loyalty"][active]
        - 0.9 * (s["engagement"][active] - np.log(MEAN_SESSION_RATE))
        + ticket_weight * np.minimum(s["frustration"][active], 6.0)
        + 0.03 * (s["price"][active] - 20.0)
        + 1.5 * s["shock"][active]
        + 1.0 * np.exp(-tenure / 45.0)
        + channel_risk
    )
    churned = rng.random(active.shape[0]) < _sigmoid(logit)
    s["alive"][active[churned]] = False


def _customer_rows(
    s: dict[str, np.ndarray], rows: np.ndarray, updated_us: np.ndarray, epoch_day: int
) -> pa.Table:
    def codes(values: np.ndarray, names: tuple[str, ...]) -> pa.Array:
        return pa.DictionaryArray.from_arrays(
            pa.array(values, pa.int8()), pa.array(names, pa.string())
        ).cast(pa.string())

    return pa.Table.from_arrays(
        [
            pa.array(rows.astype(np.int64) + 1, pa.int64()),
            pa.array(s["signup_day"][rows].astype(np.int32) + epoch_day, pa.date32()),
            codes(s["country"][rows], COUNTRIES),
            codes(s["plan"][rows], PLANS),
            codes(s["channel"][rows], CHANNELS),
            pa.array(s["price"][rows], pa.float64()),
            pa.array(updated_us, pa.timestamp("us")),
        ],
        schema=CUSTOMERS_SCHEMA,
    )


def _event_rows(ev: dict[str, np.ndarray]) -> pa.Table:
    order = np.lexsort((ev["id"], ev["time"]))
    amount = ev["amount"][order]
    return pa.Table.from_arrays(
        [
            pa.array(ev["id"][order], pa.int64()),
            pa.array(ev["customer"][order], pa.int64()),
            pa.array(ev["time"][order], pa.timestamp("us")),
            pa.DictionaryArray.from_arrays(
                pa.array(ev["type"][order], pa.int8()), pa.array(EVENT_TYPES, pa.string())
            ).cast(pa.string()),
            pa.array(amount, pa.float64(), mask=np.isnan(amount)),
        ],
        schema=EVENTS_SCHEMA,
    )


def _route(
    rng: np.random.Generator, ev: dict[str, np.ndarray], day: int, config: SimulateConfig
) -> dict[str, np.ndarray]:
    """Give each new event the day it lands: late ones 1-3 days on, re-sends 0-3 days later."""
    n = ev["id"].shape[0]
    late = rng.random(n) < config.late_rate
    due = day + np.where(late, rng.integers(1, 4, n), 0).astype(np.int32)
    dup = rng.random(n) < config.duplicate_rate
    dup_due = due[dup] + rng.integers(0, 4, int(dup.sum())).astype(np.int32)
    out = {k: np.concatenate([v, v[dup]]) for k, v in ev.items()}
    out["due"] = np.concatenate([due, dup_due]).astype(np.int32)
    return out


def simulate_day(
    state: ShopState, *, seed: int, start: dt.date, config: SimulateConfig
) -> tuple[ShopState, pa.Table, pa.Table]:
    """Simulate day `state.next_day`: return the next state and its customers and events rows.

    The input state is not modified. The result depends only on the state, the seed, the start
    date, the day index and the config.
    """
    day = state.next_day
    rng = np.random.default_rng([seed, day])
    epoch_day = (start - EPOCH).days
    day_us = (epoch_day + day) * US_PER_DAY
    s = {k: getattr(state, k).copy() for k in _CUSTOMER_DTYPES}
    if day == 0 and config.initial_customers:
        # The initial population signed up in the year before the start and is active today.
        n = config.initial_customers
        _append(s, _new_customers(rng, n, rng.integers(-365, 0, n), day, config))
    n_old = s["signup_day"].shape[0]

    old = np.arange(n_old)
    alive_old = old[s["alive"]]
    changed = np.zeros(n_old, dtype=np.bool_)
    changed[state.n_customers :] = True
    if day == config.drift_day:
        raised = old[s["plan"] == RAISED_PLAN]
        s["price"][raised] = _price(
            s["plan"][raised], s["channel"][raised], _list_prices(day, config)
        )
        s["shock"][raised[s["alive"][raised]]] = 1.0
        changed[raised] = True
    # Plan changes: upgrades are rare; a price shock makes downgrades likelier.
    u = rng.random(alive_old.shape[0])
    shock = s["shock"][alive_old]
    plan = s["plan"][alive_old]
    up = (u < 0.0012) & (plan < len(PLANS) - 1)
    down = (u > 1.0 - (0.0015 + 0.01 * shock)) & (plan > 0)
    moved = alive_old[up | down]
    s["plan"][moved] = (plan + up.astype(np.int8) - down.astype(np.int8))[up | down]
    s["price"][moved] = _price(s["plan"][moved], s["channel"][moved], _list_prices(day, config))
    changed[moved] = True

    # Engagement drifts; a few steady customers start drifting away every day.
    start_falling = (rng.random(alive_old.shape[0]) < 0.004) & (s["trend"][alive_old] == 0.0)
    s["trend"][alive_old[start_falling]] = -rng.uniform(0.015, 0.06, int(start_falling.sum()))
    s["target"][alive_old] += s["trend"][alive_old]
    e = s["engagement"][alive_old]
    s["engagement"][alive_old] = (
        e + 0.1 * (s["target"][alive_old] - e) + rng.normal(0.0, 0.1, e.shape[0])
    )
    # Breaks make a quiet customer ambiguous: most come back, the churned never do.
    pause = s["pause"][alive_old]
    begin = (pause == 0) & (rng.random(alive_old.shape[0]) < 0.012)
    pause = np.where(begin, rng.geometric(1.0 / 14.0, alive_old.shape[0]), pause)
    s["pause"][alive_old] = np.maximum(pause - 1, 0)
    s["frustration"][alive_old] *= np.exp(-1.0 / 21.0)
    s["shock"][alive_old] *= np.exp(-1.0 / 30.0)

    ev = _daily_events(rng, s, alive_old, day_us)
    n_ev = ev["type"].shape[0]
    ev["id"] = state.next_event_id + np.arange(n_ev, dtype=np.int64)
    routed = _route(rng, ev, day, config)
    _churn(rng, s, alive_old, day, config)

    # Today's sign-ups are active from tomorrow on.
    n_signup = int(rng.poisson(config.signups_per_day))
    _append(s, _new_customers(rng, n_signup, np.full(n_signup, day), day, config))
    rows = np.concatenate([np.flatnonzero(changed), n_old + np.arange(n_signup)])
    updated_us = day_us + rng.integers(0, 86_400, rows.shape[0], dtype=np.int64) * 1_000_000
    customers = _customer_rows(s, rows, updated_us, epoch_day)

    pending = {k[len("pend_") :]: getattr(state, k) for k in _PENDING_DTYPES}
    both = {k: np.concatenate([pending[k], routed[k]]) for k in pending}
    today = both["due"] == day
    events = _event_rows({k: v[today] for k, v in both.items()})
    later = {f"pend_{k}": v[~today].astype(_PENDING_DTYPES[f"pend_{k}"]) for k, v in both.items()}

    next_state = ShopState(next_day=day + 1, next_event_id=state.next_event_id + n_ev, **s, **later)
    return next_state, customers, events


# ---------------------------------------------------------------------------------------------
# Lake I/O


def parquet_bytes(table: pa.Table) -> bytes:
    """Serialise a table to Parquet; the same table gives the same bytes."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="snappy")
    return sink.getvalue().to_pybytes()


def state_bytes(state: ShopState) -> bytes:
    """Serialise the state exactly (npz), so an appended run continues bit for bit."""
    arrays = {k: getattr(state, k) for k in {**_CUSTOMER_DTYPES, **_PENDING_DTYPES}}
    arrays["next_day"] = np.array(state.next_day, dtype=np.int64)
    arrays["next_event_id"] = np.array(state.next_event_id, dtype=np.int64)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def state_from_bytes(data: bytes, where: str) -> ShopState:
    """Read a state written by `state_bytes`; `where` names the file in errors."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        missing = sorted(
            {*_CUSTOMER_DTYPES, *_PENDING_DTYPES, "next_day", "next_event_id"} - set(npz.files)
        )
        if missing:
            raise LakeMismatchError(f"{where}: missing arrays {missing}")
        arrays = {k: npz[k].astype(t) for k, t in {**_CUSTOMER_DTYPES, **_PENDING_DTYPES}.items()}
        return ShopState(
            next_day=int(npz["next_day"]), next_event_id=int(npz["next_event_id"]), **arrays
        )


def partition_path(table: str, date: dt.date) -> str:
    """Path of a table's partition for `date`, relative to the lake root."""
    return f"{LANDING}/{table}/date={date.isoformat()}/{PART_FILE}"


# ---------------------------------------------------------------------------------------------
# Faults on demand: what a real lake does to a pipeline, injected after a day is simulated so
# the shop itself (and its state) is the same with or without them. Row faults hit disjoint
# random rows of a day (by seed and day); whole-day faults fall on fixed days of a cycle.

ROW_FAULTS = ("nulls", "out_of_range", "unknown_category", "duplicates", "late")
DAY_FAULTS = (
    "timezone",
    "resent_file",
    "renamed_column",
    "truncated_file",
    "empty_day",
    "missing_day",
)
FAULTS = ROW_FAULTS + DAY_FAULTS
FAULT_STREAM = 0xFA17  # a separate random stream: faults never change the clean data
RESENT_FILE = "part-0001.parquet"
UNKNOWN_EVENT_TYPE = "teleport"
UNKNOWN_PLAN = "platinum"
RENAMED = ("plan", "plan_name")  # customers column renamed on the renamed_column day


@dataclass(frozen=True)
class FaultConfig:
    """How often each fault strikes (params `simulate.faults`); `--faults` picks which."""

    # share of a day's rows hit by each row fault (events; customers for nulls, out_of_range
    # and unknown_category)
    null_rate: float = 0.003
    out_of_range_rate: float = 0.003
    unknown_category_rate: float = 0.003
    duplicate_rate: float = 0.005
    late_rate: float = 0.005
    late_days: tuple[int, int] = (4, 10)  # late events are dated this many days earlier
    # whole-day faults recur every `every_days` days, each on its own day of that cycle
    every_days: int = 30
    timezone_day: int = 3
    resent_file_day: int = 5
    renamed_column_day: int = 8
    truncated_file_day: int = 11
    empty_day: int = 14
    missing_day: int = 17
    timezone: str = "America/New_York"

    def __post_init__(self) -> None:
        rates = ("null_rate", "out_of_range_rate", "unknown_category_rate")
        for name in (*rates, "duplicate_rate", "late_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"simulate.faults.{name}: must be in [0, 1]")
        if self.every_days < 1:
            raise ValueError("simulate.faults.every_days: must be >= 1")
        low, high = self.late_days
        if not 1 <= low <= high:
            raise ValueError(f"simulate.faults.late_days: need 1 <= low <= high, got {low, high}")

    @classmethod
    def from_params(cls, raw: Mapping[str, Any] | None) -> FaultConfig:
        raw = dict(raw or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(
                f"params simulate.faults: unknown keys {unknown} (known: {sorted(known)})"
            )
        if "late_days" in raw:
            raw["late_days"] = tuple(raw["late_days"])
        return cls(**raw)

    def strikes(self, fault: str, day: int) -> bool:
        """Whether whole-day `fault` falls on day index `day`."""
        first = {
            "timezone": self.timezone_day,
            "resent_file": self.resent_file_day,
            "renamed_column": self.renamed_column_day,
            "truncated_file": self.truncated_file_day,
            "empty_day": self.empty_day,
            "missing_day": self.missing_day,
        }[fault]
        return day >= first and (day - first) % self.every_days == 0


def parse_faults(text: str) -> frozenset[str]:
    """`all`, `none` or a comma list of fault names."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    if words == ["all"]:
        return frozenset(FAULTS)
    if words in ([], ["none"]):
        return frozenset()
    unknown = sorted(set(words) - set(FAULTS))
    if unknown:
        raise ValueError(
            f"unknown fault(s) {unknown}: use all, none or some of {', '.join(FAULTS)}"
        )
    return frozenset(words)


def _pick(rng: np.random.Generator, n: int, rates: Sequence[float]) -> list[np.ndarray]:
    """Disjoint random row sets, one per rate, so each row carries at most one fault."""
    order = rng.permutation(n)
    picked, at = [], 0
    for rate in rates:
        k = min(int(rng.binomial(n, rate)) if n else 0, n - at)
        picked.append(np.sort(order[at : at + k]))
        at += k
    return picked


def _set(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def _with(table: pa.Table, name: str, rows: np.ndarray, value: Any) -> pa.Table:
    """`table` with `value` (None: null) at `rows` of column `name`."""
    column = table[name].combine_chunks()
    mask = np.zeros(table.num_rows, dtype=np.bool_)
    mask[rows] = True
    if value is None:
        replacement = pa.nulls(table.num_rows, column.type)
    else:
        replacement = pa.array(np.full(table.num_rows, value), column.type)
    # a plain field name: the column becomes nullable, as a producer writing nulls would say
    return _set(table, name, pc.if_else(pa.array(mask), replacement, column))


def _row_faults(
    rng: np.random.Generator,
    customers: pa.Table,
    events: pa.Table,
    faults: frozenset[str],
    cfg: FaultConfig,
) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    counts: dict[str, int] = {}
    rates = {
        "nulls": cfg.null_rate,
        "out_of_range": cfg.out_of_range_rate,
        "unknown_category": cfg.unknown_category_rate,
        "duplicates": cfg.duplicate_rate,
        "late": cfg.late_rate,
    }
    wanted = [f for f in ROW_FAULTS if f in faults]
    ev_rows = dict(
        zip(wanted, _pick(rng, events.num_rows, [rates[f] for f in wanted]), strict=True)
    )
    cu_wanted = [f for f in ("nulls", "out_of_range", "unknown_category") if f in faults]
    cu_rows = dict(
        zip(cu_wanted, _pick(rng, customers.num_rows, [rates[f] for f in cu_wanted]), strict=True)
    )
    if "nulls" in faults:
        events = _with(events, "customer_id", ev_rows["nulls"], None)
        customers = _with(customers, "country", cu_rows["nulls"], None)
    if "out_of_range" in faults:
        events = _with(events, "amount", ev_rows["out_of_range"], -1.0)
        customers = _with(customers, "monthly_price", cu_rows["out_of_range"], -1.0)
    if "unknown_category" in faults:
        events = _with(events, "event_type", ev_rows["unknown_category"], UNKNOWN_EVENT_TYPE)
        customers = _with(customers, "plan", cu_rows["unknown_category"], UNKNOWN_PLAN)
    if "late" in faults:
        rows = ev_rows["late"]
        low, high = cfg.late_days
        shift = np.zeros(events.num_rows, dtype=np.int64)
        shift[rows] = rng.integers(low, high + 1, rows.shape[0]) * US_PER_DAY
        times = events["event_time"].combine_chunks().cast(pa.int64()).to_numpy() - shift
        events = _set(events, "event_time", pa.array(times, pa.int64()).cast(pa.timestamp("us")))
    if "duplicates" in faults:
        # the same rows sent twice in the same file, right after the day's rows
        events = pa.concat_tables([events, events.take(ev_rows["duplicates"])])
    for fault in wanted:
        counts[fault] = int(ev_rows[fault].shape[0]) + int(cu_rows.get(fault, np.empty(0)).shape[0])
    return customers, events, counts


def inject_faults(
    day: int,
    date: dt.date,
    customers: pa.Table,
    events: pa.Table,
    *,
    seed: int,
    faults: frozenset[str],
    config: FaultConfig,
    previous_events: bytes | None = None,
) -> tuple[dict[str, bytes], dict[str, int]]:
    """The files day `day` lands as (lake-relative path -> bytes) once `faults` are injected,
    and how many rows (or files) each fault hit. Pure: the same arguments give the same bytes.

    `previous_events` is the day before's events file as the lake holds it, re-sent on the
    resent_file day.
    """
    counts: dict[str, int] = {}
    if "missing_day" in faults and config.strikes("missing_day", day):
        return {}, {"missing_day": 1}
    if "empty_day" in faults and config.strikes("empty_day", day):
        customers, events = customers.slice(0, 0), events.slice(0, 0)
        counts["empty_day"] = 1
    rng = np.random.default_rng([seed, day, FAULT_STREAM])
    if faults & set(ROW_FAULTS):
        customers, events, hit = _row_faults(rng, customers, events, faults, config)
        counts.update(hit)
    if "timezone" in faults and config.strikes("timezone", day):
        local = events["event_time"].cast(pa.timestamp("us", tz=config.timezone))
        events = _set(events, "event_time", local)
        counts["timezone"] = events.num_rows
    if "renamed_column" in faults and config.strikes("renamed_column", day):
        old, new = RENAMED
        customers = customers.rename_columns(
            [new if n == old else n for n in customers.column_names]
        )
        counts["renamed_column"] = customers.num_rows
    files = {
        partition_path("customers", date): parquet_bytes(customers),
        partition_path("events", date): parquet_bytes(events),
    }
    if "truncated_file" in faults and config.strikes("truncated_file", day):
        path = partition_path("events", date)
        files[path] = files[path][: len(files[path]) // 2]
        counts["truncated_file"] = events.num_rows
    if "resent_file" in faults and config.strikes("resent_file", day) and previous_events:
        files[partition_path("events", date).replace(PART_FILE, RESENT_FILE)] = previous_events
        counts["resent_file"] = 1
    return files, counts


@dataclass(frozen=True)
class SimulateResult:
    lake: str
    first_day: int
    days_written: int
    start: dt.date
    customers_rows: int
    events_rows: int
    faults: dict[str, int] = dataclasses.field(default_factory=dict)  # fault -> rows/days hit

    def summary(self) -> str:
        if self.days_written == 0:
            last = self.start + dt.timedelta(days=self.first_day - 1)
            return (
                f"simulate: nothing written: {self.lake} already holds "
                f"{self.start}..{last} ({self.first_day} days)"
            )
        first = self.start + dt.timedelta(days=self.first_day)
        last = first + dt.timedelta(days=self.days_written - 1)
        line = (
            f"simulate: wrote {self.days_written} day{'s' * (self.days_written != 1)} "
            f"({first}..{last}): "
            f"customers {self.customers_rows} rows, events {self.events_rows} rows -> {self.lake}"
        )
        if self.faults:
            line += "; faults injected: " + ", ".join(f"{k} {v}" for k, v in self.faults.items())
        return line


def _check_meta(
    meta: Mapping[str, Any],
    where: str,
    start: dt.date | None,
    seed: int | None,
    config: SimulateConfig,
) -> None:
    if meta.get("format") != FORMAT_VERSION:
        raise LakeMismatchError(
            f"{where}: format {meta.get('format')!r}, expected {FORMAT_VERSION}"
        )
    if start is not None and start.isoformat() != meta["start"]:
        raise LakeMismatchError(
            f"{where}: the lake starts on {meta['start']}, not --start {start}; "
            "omit --start to append, or use a new lake"
        )
    if seed is not None and seed != meta["seed"]:
        raise LakeMismatchError(
            f"{where}: the lake was simulated with seed {meta['seed']}, not --seed {seed}; "
            "omit --seed to append, or use a new lake"
        )
    # initial_customers only shapes day 0, which the lake already holds.
    ours = {k: v for k, v in config.knobs().items() if k != "initial_customers"}
    theirs = {k: v for k, v in meta["knobs"].items() if k != "initial_customers"}
    diff = sorted(k for k in ours if ours[k] != theirs.get(k))
    if diff:
        pairs = ", ".join(f"{k}: lake {theirs.get(k)!r} vs params {ours[k]!r}" for k in diff)
        raise LakeMismatchError(f"{where}: simulate knobs differ from the lake's ({pairs})")


def simulate(
    lake_url: str,
    *,
    days: int,
    config: SimulateConfig,
    start: dt.date | None = None,
    seed: int | None = None,
    default_seed: int = 7,
    faults: frozenset[str] = frozenset(),
    fault_config: FaultConfig | None = None,
) -> SimulateResult:
    """Write missing daily partitions of the simulated shop to the lake at `lake_url`.

    On a new lake, days 0..days-1 from `start` are written. On an existing one the simulation
    continues from its stored state: with `start` given, up to day `days - 1` (a range it
    already holds is a no-op); without, `days` more days. A `start`, `seed` or knob that
    differs from the lake's raises `LakeMismatchError`. `faults` (see `FAULTS`) are injected
    into the days this call writes, as `fault_config` says; the simulator state never sees them.
    """
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    lake = Lake(lake_url)
    where = f"{lake_url}/{META_FILE}"
    if lake.exists(META_FILE):
        meta = json.loads(lake.read(META_FILE))
        _check_meta(meta, where, start, seed, config)
        start_date = dt.date.fromisoformat(meta["start"])
        run_seed = int(meta["seed"])
        run_config = SimulateConfig(**meta["knobs"])
        state = state_from_bytes(lake.read(STATE_FILE), f"{lake_url}/{STATE_FILE}")
        if state.next_day != meta["next_day"]:
            raise LakeMismatchError(
                f"{lake_url}/{STATE_FILE}: next day {state.next_day} but meta.json says "
                f"{meta['next_day']} (interrupted write?); rebuild the lake"
            )
        end = days if start is not None else state.next_day + days
    else:
        if lake.exists(LANDING):
            raise LakeMismatchError(
                f"{lake_url}: has {LANDING}/ but no {META_FILE}; not a simulator lake, refusing "
                "to write into it"
            )
        if start is None:
            raise LakeMismatchError(
                f"{where}: no simulator state; --start is needed for a new lake"
            )
        start_date, run_seed, run_config = start, default_seed if seed is None else seed, config
        state = initial_state()
        end = days

    first_day = state.next_day
    n_customers = n_events = 0
    fault_config = fault_config or FaultConfig()
    hits: dict[str, int] = {}
    while state.next_day < end:
        day = state.next_day
        date = start_date + dt.timedelta(days=day)
        state, customers, events = simulate_day(
            state, seed=run_seed, start=start_date, config=run_config
        )
        files = {
            partition_path("customers", date): parquet_bytes(customers),
            partition_path("events", date): parquet_bytes(events),
        }
        if faults:
            previous = partition_path("events", date - dt.timedelta(days=1))
            resend = "resent_file" in faults and fault_config.strikes("resent_file", day)
            files, hit = inject_faults(
                day,
                date,
                customers,
                events,
                seed=run_seed,
                faults=faults,
                config=fault_config,
                previous_events=lake.read(previous) if resend and lake.exists(previous) else None,
            )
            for fault, n in hit.items():
                hits[fault] = hits.get(fault, 0) + n
        for path, data in files.items():
            lake.write(path, data)
        n_customers += customers.num_rows
        n_events += events.num_rows
    if state.next_day > first_day:
        meta = {
            "format": FORMAT_VERSION,
            "seed": run_seed,
            "start": start_date.isoformat(),
            "knobs": run_config.knobs(),
            "next_day": state.next_day,
        }
        # meta.json last: it is what makes the new state count.
        lake.write(STATE_FILE, state_bytes(state))
        lake.write(META_FILE, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return SimulateResult(
        lake=lake_url,
        first_day=first_day,
        days_written=state.next_day - first_day,
        start=start_date,
        customers_rows=n_customers,
        events_rows=n_events,
        faults={f: hits[f] for f in FAULTS if f in hits},
    )


def load_config(params_path: str | Path) -> tuple[SimulateConfig, int]:
    """The `simulate` section and the top-level `seed` of params; defaults if no file."""
    if not Path(params_path).is_file():
        return SimulateConfig(), 7
    params = load_params(params_path)
    config = SimulateConfig.from_params(section(params, "simulate"))
    return config, int(params.get("seed", 7))


def load_fault_config(params_path: str | Path) -> FaultConfig:
    """params `simulate.faults` (defaults when absent or no file)."""
    if not Path(params_path).is_file():
        return FaultConfig()
    simulate_section = load_params(params_path).get("simulate") or {}
    return FaultConfig.from_params(simulate_section.get("faults"))
