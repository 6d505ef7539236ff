"""Invoice lines of an online retailer (`conf/dataset/retail.yaml`), in the shape of the public
"Online Retail" data, generated.

A population of customers (country, how often they buy, when they stop) is drawn from the seed;
each open day, every customer still active places an invoice with a probability that fades in
the weeks before they stop, so recency and trend predict churn. Customers about to stop cancel
more (invoice numbers prefixed C, negative quantities). About a fifth of the lines belong to
guests (no customer id). The calendar is a real shop's: closed on Saturdays and over the
year-end break, a first day with a handful of lines, and some days with very few. Invoice
numbers and free-text descriptions are columns no model reads.

From day REGIME_DAY on, a new price list raises every price by PRICE_RISE: the line amounts,
an input of every spending feature, move (covariate drift).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa

from stages.sim.samples import Sample

CUSTOMERS = 400
COUNTRIES = ("United Kingdom", "Germany", "France", "EIRE", "Spain", "Netherlands", "Belgium",
             "Portugal")  # fmt: skip
COUNTRY_WEIGHTS = (0.82, 0.05, 0.04, 0.03, 0.02, 0.02, 0.01, 0.01)
PRODUCTS = 60
CLOSED = ("12-24", "12-25", "12-26", "12-27", "12-28", "12-29", "12-30", "12-31", "01-01",
          "01-02", "01-03")  # fmt: skip
FADE_DAYS = 28  # visits thin out over the weeks before a customer stops
GUEST_SHARE = 0.2
REGIME_DAY = 140
PRICE_RISE = 1.6
SCHEMA = pa.schema(
    [
        ("invoice_no", pa.string()),
        ("stock_code", pa.string()),
        ("description", pa.string()),
        ("quantity", pa.int64()),
        ("invoice_date", pa.timestamp("us")),
        ("unit_price", pa.float64()),
        ("customer_id", pa.int64()),
        ("country", pa.string()),
    ]
)


def is_open(date: dt.date) -> bool:
    return date.weekday() != 5 and date.strftime("%m-%d") not in CLOSED


def population(seed: int) -> dict[str, np.ndarray]:
    """Every customer's id, country, visit rate, first and last active day (day index)."""
    rng = np.random.default_rng([seed, 1_000_003])
    rate = rng.gamma(2.0, 0.06, CUSTOMERS).clip(0.01, 0.6)
    first = np.where(rng.random(CUSTOMERS) < 0.6, 0, rng.integers(0, 120, CUSTOMERS))
    # rare buyers stop sooner: the hazard falls with the visit rate
    lifetime = rng.exponential(40 + 500 * rate)
    return {
        "id": 12346 + np.arange(CUSTOMERS),
        "country": rng.choice(len(COUNTRIES), CUSTOMERS, p=COUNTRY_WEIGHTS),
        "rate": rate,
        "first": first,
        "last": first + lifetime.astype("int64"),
    }


def _products(seed: int) -> tuple[list[str], list[str], np.ndarray]:
    rng = np.random.default_rng([seed, 1_000_033])
    codes = [f"{84000 + 37 * i}{'AB'[i % 2] if i % 3 == 0 else ''}" for i in range(PRODUCTS)]
    words = ("WHITE", "RED", "HEART", "LANTERN", "MUG", "BAG", "CANDLE", "CLOCK", "BOX", "TIN")
    names = [f"{words[i % 10]} {words[(3 * i + 1) % 10]} {i}" for i in range(PRODUCTS)]
    prices = np.round(rng.lognormal(1.0, 0.7, PRODUCTS), 2).clip(0.1, 200)
    return codes, names, prices


def day(date: dt.date, index: int, seed: int) -> pd.DataFrame | None:
    if not is_open(date):
        return None
    rng = np.random.default_rng([seed, index])
    pop = population(seed)
    codes, names, prices = _products(seed)
    if index >= REGIME_DAY:
        prices = np.round(prices * PRICE_RISE, 2)
    active = (pop["first"] <= index) & (index <= pop["last"])
    to_go = pop["last"] - index
    fade = np.clip(to_go / FADE_DAYS, 0.15, 1.0)
    # the first day is the lake's first partial day; now and then a day is nearly empty
    volume = 0.1 if index == 0 else (0.1 if rng.random() < 0.06 else 1.0)
    visits = active & (rng.random(CUSTOMERS) < pop["rate"] * fade * volume)
    buyers = list(np.flatnonzero(visits))
    guests = rng.poisson(len(buyers) * GUEST_SHARE / (1 - GUEST_SHARE) + 0.3 * volume)
    rows = []
    invoice = 536365 + index * 1000
    for who in [*buyers, *([None] * guests)]:
        invoice += 1
        soon = who is not None and to_go[who] < FADE_DAYS
        cancelled = rng.random() < (0.25 if soon else 0.04)
        stamp = pd.Timestamp(date) + pd.Timedelta(minutes=int(rng.integers(8 * 60, 20 * 60)))
        for _ in range(int(rng.integers(1, 7))):
            item = int(rng.integers(PRODUCTS))
            quantity = int(rng.choice([1, 2, 3, 4, 6, 12, 24]))
            rows.append(
                {
                    "invoice_no": f"C{invoice}" if cancelled else str(invoice),
                    "stock_code": codes[item],
                    "description": names[item] if rng.random() > 0.01 else None,
                    "quantity": -quantity if cancelled else quantity,
                    "invoice_date": stamp,
                    "unit_price": float(prices[item]),
                    "customer_id": None if who is None else int(pop["id"][who]),
                    "country": COUNTRIES[
                        int(pop["country"][who]) if who is not None else int(rng.integers(3))
                    ],
                }
            )
    if not rows:
        return pd.DataFrame({f.name: pd.Series(dtype=object) for f in SCHEMA})
    frame = pd.DataFrame(rows)
    frame["customer_id"] = frame["customer_id"].astype("Int64")
    return frame


SAMPLE = Sample(table="invoices", start=dt.date(2025, 10, 1), days=150, day=day, schema=SCHEMA)
