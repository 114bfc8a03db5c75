"""The price table and monthly free tier that billing applies, in exact decimal arithmetic.

Defaults are Lambda's classic x86 price sheet: $0.20 per million requests, $0.0000166667 per
GB-second, and a free tier of 1,000,000 requests and 400,000 GB-seconds per account per calendar
month. Whether a cold start's init duration is billed is a rule (`InitBilling`), `never` by
default as for on-demand functions in Lambda's classic model.

Configuration, later sources overriding earlier ones key by key:

1. the defaults above;
2. a file in the data directory: `pricing.toml` or `pricing.json` (if both exist, JSON wins), or
   the file `CORRAL_PRICING_FILE` names; keys as the `PriceTable` fields
   (`request_price_per_million`, `gb_second_price`, `free_tier_requests`,
   `free_tier_gb_seconds`, `init_billing`, `currency`). Write prices as strings
   (`"0.0000166667"`) or numbers: numbers are read as decimals, never through binary floats;
3. environment variables `CORRAL_PRICE_PER_MILLION_REQUESTS`, `CORRAL_PRICE_PER_GB_SECOND`,
   `CORRAL_FREE_TIER_REQUESTS`, `CORRAL_FREE_TIER_GB_SECONDS`, `CORRAL_INIT_BILLING`.

Every quantity is a `Decimal`; GB-seconds of whole MB and whole ms are exact (the divisor
1,024,000 = 2^13 * 5^3 always terminates), and so are costs.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from decimal import Context, Decimal, InvalidOperation, localcontext
from enum import StrEnum
from pathlib import Path
from typing import Any

from corral.errors import ConfigError

__all__ = [
    "DEFAULT_PRICES",
    "ENV_VARS",
    "InitBilling",
    "PriceTable",
    "exact",
    "gb_seconds",
    "load_prices",
]

MB_MS_PER_GB_SECOND = 1024 * 1000
"""GB-seconds = memory MB x billed ms / 1,024,000."""

# Wide enough that no realistic sum rounds: 1e9 invocations x 10 GB x 900 s has 23 digits.
EXACT = Context(prec=60)


def exact() -> Any:
    """A decimal context (use as `with exact():`) in which billing sums never round."""
    return localcontext(EXACT)


class InitBilling(StrEnum):
    """When a cold start's init duration is billed (added to the invocation's GB-seconds)."""

    NEVER = "never"  # Lambda's classic on-demand model for managed runtimes (the default)
    ALWAYS = "always"  # every cold start pays for its init (Lambda's model since August 2025)
    CUSTOM_RUNTIMES = "custom-runtimes"  # only `provided*` runtimes, as classic Lambda billed


def _decimal(name: str, value: object) -> Decimal:
    if isinstance(value, bool):
        raise ConfigError(f"pricing: {name} must be a number, not {value!r}")
    try:
        number = Decimal(str(value).strip()) if not isinstance(value, Decimal) else value
    except InvalidOperation as exc:
        raise ConfigError(f"pricing: {name} must be a decimal number, not {value!r}") from exc
    if not number.is_finite() or number < 0:
        raise ConfigError(f"pricing: {name} must be a finite number >= 0, not {value!r}")
    return number


def _whole(name: str, value: object) -> int:
    number = _decimal(name, value)
    if number != number.to_integral_value():
        raise ConfigError(f"pricing: {name} must be a whole number, not {value!r}")
    return int(number)


@dataclass(frozen=True)
class PriceTable:
    """Prices, the per-account monthly free tier and the init billing rule."""

    request_price_per_million: Decimal = Decimal("0.20")
    gb_second_price: Decimal = Decimal("0.0000166667")
    free_tier_requests: int = 1_000_000
    free_tier_gb_seconds: Decimal = Decimal("400000")
    init_billing: InitBilling = InitBilling.NEVER
    currency: str = "USD"

    def __post_init__(self) -> None:
        # Normalise whatever a caller passed (str, int, Decimal) and validate it.
        object.__setattr__(self, "request_price_per_million",
                           _decimal("request_price_per_million", self.request_price_per_million))
        object.__setattr__(self, "gb_second_price",
                           _decimal("gb_second_price", self.gb_second_price))
        object.__setattr__(self, "free_tier_requests",
                           _whole("free_tier_requests", self.free_tier_requests))
        object.__setattr__(self, "free_tier_gb_seconds",
                           _decimal("free_tier_gb_seconds", self.free_tier_gb_seconds))
        try:
            object.__setattr__(self, "init_billing", InitBilling(str(self.init_billing)))
        except ValueError as exc:
            choices = ", ".join(rule.value for rule in InitBilling)
            raise ConfigError(f"pricing: init_billing must be one of {choices}, "
                              f"not {self.init_billing!r}") from exc
        if not isinstance(self.currency, str) or not self.currency:
            raise ConfigError("pricing: currency must be a non-empty string")

    # -- arithmetic ------------------------------------------------------------------------------

    def request_cost(self, requests: int) -> Decimal:
        """The price of `requests` requests, exactly."""
        with exact():
            return Decimal(requests) * self.request_price_per_million / Decimal(1_000_000)

    def compute_cost(self, gb_s: Decimal) -> Decimal:
        """The price of `gb_s` GB-seconds, exactly."""
        with exact():
            return gb_s * self.gb_second_price

    def bills_init(self, runtime: str) -> bool:
        """Whether a cold start of a function on `runtime` pays for its init duration."""
        if self.init_billing is InitBilling.ALWAYS:
            return True
        if self.init_billing is InitBilling.CUSTOM_RUNTIMES:
            return runtime.startswith("provided")
        return False

    def to_json(self) -> dict[str, Any]:
        """Decimals as strings, so that no reader turns them into binary floats."""
        return {
            "request_price_per_million": str(self.request_price_per_million),
            "gb_second_price": str(self.gb_second_price),
            "free_tier_requests": self.free_tier_requests,
            "free_tier_gb_seconds": str(self.free_tier_gb_seconds),
            "init_billing": self.init_billing.value,
            "currency": self.currency,
        }


DEFAULT_PRICES = PriceTable()

ENV_VARS = {
    "CORRAL_PRICE_PER_MILLION_REQUESTS": "request_price_per_million",
    "CORRAL_PRICE_PER_GB_SECOND": "gb_second_price",
    "CORRAL_FREE_TIER_REQUESTS": "free_tier_requests",
    "CORRAL_FREE_TIER_GB_SECONDS": "free_tier_gb_seconds",
    "CORRAL_INIT_BILLING": "init_billing",
}


def gb_seconds(memory_mb: int, billed_ms: int) -> Decimal:
    """memory/1024 x billed/1000, exactly: 128 MB for 300 ms is 0.0375 GB-s."""
    with exact():
        return Decimal(memory_mb * billed_ms) / Decimal(MB_MS_PER_GB_SECOND)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the price table {path}: {exc}") from exc
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text, parse_float=Decimal)
        else:
            data = json.loads(text, parse_float=Decimal)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"the price table {path} is not valid: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"the price table {path} must be an object of settings")
    known = {f.name for f in fields(PriceTable)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"the price table {path} has unknown keys: {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")
    return data


def pricing_file(data_dir: Path | None, env: Mapping[str, str]) -> Path | None:
    """The price file in force: CORRAL_PRICING_FILE, else data_dir/pricing.{json,toml}."""
    named = env.get("CORRAL_PRICING_FILE")
    if named:
        return Path(named)
    if data_dir is None:
        return None
    for name in ("pricing.json", "pricing.toml"):
        if (data_dir / name).is_file():
            return data_dir / name
    return None


def load_prices(data_dir: Path | None = None,
                env: Mapping[str, str] | None = None) -> PriceTable:
    """Defaults, overridden by the price file, overridden by the environment."""
    env = os.environ if env is None else env
    changes: dict[str, Any] = {}
    path = pricing_file(data_dir, env)
    if path is not None:
        changes.update(_read_file(path))
    for var, key in ENV_VARS.items():
        value = env.get(var)
        if value:
            changes[key] = value
    return replace(DEFAULT_PRICES, **changes) if changes else DEFAULT_PRICES
