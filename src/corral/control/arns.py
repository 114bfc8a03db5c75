"""Function names in every form Lambda accepts, and the ARNs Corral hands out."""

from __future__ import annotations

import re
from dataclasses import dataclass

from corral.errors import InvalidParameterValueException

_NAME = re.compile(
    r"^(?:arn:(?:aws[a-zA-Z-]*)?:lambda:)?(?:(?P<region>[a-z]{2}(?:-gov)?-[a-z]+-\d):)?"
    r"(?:(?P<account>\d{12}):)?(?:function:)?(?P<name>[a-zA-Z0-9-_.]+)"
    r"(?::(?P<qualifier>\$LATEST|[a-zA-Z0-9-_]+))?$"
)
NAME_PATTERN = r"(arn:(aws[a-zA-Z-]*)?:lambda:)?([a-z]{2}(-gov)?-[a-z]+-\d{1}:)?(\d{12}:)?" \
               r"(function:)?([a-zA-Z0-9-_]+)(:(\$LATEST|[a-zA-Z0-9-_]+))?"
_PLAIN_NAME = re.compile(r"^[a-zA-Z0-9-_]{1,64}$")


@dataclass(frozen=True)
class FunctionRef:
    name: str
    qualifier: str | None


def parse_function_name(value: str, field: str = "functionName") -> FunctionRef:
    """Accept `name`, `name:qualifier`, `account:function:name` and full ARNs."""
    match = _NAME.match(value) if len(value) <= 256 else None
    if not match or not _PLAIN_NAME.match(match.group("name")):
        raise InvalidParameterValueException(
            f"1 validation error detected: Value '{value}' at '{field}' failed to satisfy "
            f"constraint: Member must satisfy regular expression pattern: {NAME_PATTERN}")
    return FunctionRef(match.group("name"), match.group("qualifier"))


def resolve_qualifier(ref: FunctionRef, qualifier: str | None) -> str | None:
    """Combine a `:qualifier` suffix with a `Qualifier` parameter; they must agree."""
    if ref.qualifier and qualifier and ref.qualifier != qualifier:
        raise InvalidParameterValueException(
            "The derived qualifier from the function name does not match the specified "
            "qualifier.")
    return ref.qualifier or qualifier


def function_arn(region: str, account: str, name: str, qualifier: str | None = None) -> str:
    arn = f"arn:aws:lambda:{region}:{account}:function:{name}"
    return f"{arn}:{qualifier}" if qualifier else arn
