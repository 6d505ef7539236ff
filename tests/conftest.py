from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from stages.lib.params import compose_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shop_params_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """params.yaml composed from the project's real conf/."""
    return compose_params(ROOT / "conf", tmp_path_factory.mktemp("params") / "params.yaml")


@pytest.fixture
def shop_params(shop_params_file: Path) -> dict:
    return yaml.safe_load(shop_params_file.read_text())


def write_params(params: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def write_partition(
    root: Path, table: str, date: str, frame: pd.DataFrame, name: str = "part-0000.parquet"
) -> Path:
    path = root / "landing" / table / f"date={date}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


def events_frame(rows: list[tuple]) -> pd.DataFrame:
    """rows of (event_id, customer_id, 'YYYY-MM-DD HH:MM', event_type, amount|None)."""
    df = pd.DataFrame(
        rows, columns=["event_id", "customer_id", "event_time", "event_type", "amount"]
    )
    df["event_time"] = pd.to_datetime(df["event_time"]).astype("datetime64[us]")
    df["amount"] = df["amount"].astype("float64")
    return df


def customers_frame(rows: list[tuple]) -> pd.DataFrame:
    """rows of (customer_id, signup 'YYYY-MM-DD', country, plan, channel, price, 'updated')."""
    df = pd.DataFrame(
        rows,
        columns=[
            "customer_id",
            "signup_date",
            "country",
            "plan",
            "channel",
            "monthly_price",
            "updated_at",
        ],
    )
    df["signup_date"] = pd.to_datetime(df["signup_date"]).dt.date
    df["updated_at"] = pd.to_datetime(df["updated_at"]).astype("datetime64[us]")
    return df
