"""The price table: defaults, exact GB-second and cost arithmetic, loading from files and env."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from corral.errors import ConfigError
from corral.invoke.report import billed_duration_ms
from corral.metering.prices import (
    DEFAULT_PRICES,
    InitBilling,
    PriceTable,
    gb_seconds,
    load_prices,
)


def test_defaults_are_the_classic_price_sheet() -> None:
    """Defaults: $0.20 per 1M requests, $0.0000166667 per GB-s, 1M requests and 400,000 GB-s."""
    assert DEFAULT_PRICES.request_price_per_million == Decimal("0.20")
    assert DEFAULT_PRICES.gb_second_price == Decimal("0.0000166667")
    assert DEFAULT_PRICES.free_tier_requests == 1_000_000
    assert DEFAULT_PRICES.free_tier_gb_seconds == Decimal(400_000)
    assert DEFAULT_PRICES.init_billing is InitBilling.NEVER


def test_250ms_at_128mb_with_100ms_granularity_bills_300ms_and_0_0375_gb_s() -> None:
    """The issue's example: 250 ms rounds up to 300 ms, and 128 MB x 300 ms is 0.0375 GB-s."""
    billed = billed_duration_ms(250, 100)
    assert billed == 300
    assert gb_seconds(128, billed) == Decimal("0.0375")
    assert DEFAULT_PRICES.compute_cost(gb_seconds(128, billed)) == Decimal("0.00000062500125")


def test_1ms_granularity_bills_the_rounded_up_millisecond() -> None:
    """With 1 ms granularity 250.4 ms bills 251 ms: 128 MB x 251 ms is 0.031375 GB-s exactly."""
    billed = billed_duration_ms(250.4, 1)
    assert billed == 251
    assert gb_seconds(128, billed) == Decimal("0.031375")
    assert billed_duration_ms(250.0, 1) == 250


def test_gb_seconds_are_exact_for_odd_memory_sizes() -> None:
    """1,000 MB for 100 ms is 0.09765625 GB-s exactly, not a rounded binary float."""
    assert gb_seconds(1000, 100) == Decimal("0.09765625")
    assert gb_seconds(10240, 900_000) == Decimal(9000)


def test_request_cost_is_exact() -> None:
    """One request costs $0.0000002; a million cost $0.20; three cost $0.0000006."""
    assert DEFAULT_PRICES.request_cost(1) == Decimal("0.0000002")
    assert DEFAULT_PRICES.request_cost(1_000_000) == Decimal("0.2")
    assert DEFAULT_PRICES.request_cost(3) == Decimal("0.0000006")


def test_init_billing_rules() -> None:
    """never bills no init, always bills every init, custom-runtimes only provided.* runtimes."""
    never = PriceTable()
    always = PriceTable(init_billing=InitBilling.ALWAYS)
    custom = PriceTable(init_billing="custom-runtimes")  # type: ignore[arg-type]
    assert not never.bills_init("python3.11") and not never.bills_init("provided.al2023")
    assert always.bills_init("python3.11") and always.bills_init("nodejs20.x")
    assert custom.bills_init("provided.al2023") and not custom.bills_init("python3.11")


def test_json_file_in_data_dir_is_read_as_exact_decimals(tmp_path: Path) -> None:
    """pricing.json numbers are read as decimals (no binary float on the way)."""
    (tmp_path / "pricing.json").write_text(
        '{"gb_second_price": 0.0000133334, "request_price_per_million": "0.25",'
        ' "free_tier_requests": 0, "init_billing": "always"}')
    prices = load_prices(tmp_path, env={})
    assert prices.gb_second_price == Decimal("0.0000133334")
    assert prices.request_price_per_million == Decimal("0.25")
    assert prices.free_tier_requests == 0
    assert prices.free_tier_gb_seconds == Decimal(400_000)
    assert prices.init_billing is InitBilling.ALWAYS


def test_toml_file_and_environment_overrides(tmp_path: Path) -> None:
    """pricing.toml is read too, and CORRAL_* variables override the file key by key."""
    (tmp_path / "pricing.toml").write_text(
        'gb_second_price = 0.00002\nfree_tier_gb_seconds = 1000\n')
    prices = load_prices(tmp_path, env={"CORRAL_FREE_TIER_GB_SECONDS": "0",
                                        "CORRAL_PRICE_PER_MILLION_REQUESTS": "0.3"})
    assert prices.gb_second_price == Decimal("0.00002")
    assert prices.free_tier_gb_seconds == 0
    assert prices.request_price_per_million == Decimal("0.3")


def test_pricing_file_named_by_environment(tmp_path: Path) -> None:
    """CORRAL_PRICING_FILE names a price file anywhere; without files the defaults apply."""
    path = tmp_path / "elsewhere.json"
    path.write_text(json.dumps({"currency": "EUR"}))
    assert load_prices(None, env={"CORRAL_PRICING_FILE": str(path)}).currency == "EUR"
    assert load_prices(tmp_path, env={}) == DEFAULT_PRICES


@pytest.mark.parametrize("content", [
    '{"gb_second_price": -1}',
    '{"gb_second_price": "cheap"}',
    '{"free_tier_requests": 1.5}',
    '{"init_billing": "sometimes"}',
    '{"price": 1}',
    '[1, 2]',
    '{not json',
])
def test_invalid_price_files_are_refused(tmp_path: Path, content: str) -> None:
    """Negative, non-numeric, fractional counts, unknown rules or keys and bad syntax fail."""
    (tmp_path / "pricing.json").write_text(content)
    with pytest.raises(ConfigError):
        load_prices(tmp_path, env={})


def test_to_json_keeps_decimals_as_strings() -> None:
    """The JSON form carries prices as strings, so readers cannot round them through floats."""
    data = DEFAULT_PRICES.to_json()
    assert data["gb_second_price"] == "0.0000166667"
    assert data["request_price_per_million"] == "0.20"
    assert data["init_billing"] == "never"
