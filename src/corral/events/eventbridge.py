"""The EventBridge subset for schedules: rules with a schedule expression and their targets.

Served as AWS JSON 1.1 on Corral's endpoint (`POST /`, `X-Amz-Target: AWSEvents.<Op>`), so
boto3's `events` client and `aws events ...` work unchanged. Operations: PutRule, DescribeRule,
DeleteRule, ListRules, EnableRule, DisableRule, PutTargets, RemoveTargets, ListTargetsByRule.

Only the default event bus exists and only scheduled rules are supported: a rule with an
`EventPattern` (or without a `ScheduleExpression`) is a ValidationException. Targets are Lambda
function ARNs (optionally qualified); `Input` is constant JSON delivered instead of the
scheduled event. Rules and targets live in the `event_rules` and `event_targets` tables; each
rule keeps `anchor` (when its expression was set; rate schedules count from it) and
`last_fired` (the scheduled time of the latest run fired, see `scheduler.py`).

Errors use EventBridge's codes, rendered as JSON 1.1 errors (HTTP 400, `__type` + `message`):
ResourceNotFoundException ("Rule X does not exist on EventBus default."), ValidationException,
LimitExceededException.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from corral.control.arns import parse_function_name
from corral.errors import InvalidParameterValueException, LambdaApiError, UnknownOperationException
from corral.events.schedule_expr import ScheduleError, parse
from corral.store.sqlite import Database

__all__ = [
    "DEFAULT_BUS",
    "EventsApi",
    "EventsApiError",
    "LimitExceededException",
    "ResourceNotFoundException",
    "Rule",
    "RuleStore",
    "Target",
    "ValidationException",
    "function_target",
    "rule_arn",
]

DEFAULT_BUS = "default"
MAX_TARGETS_PER_RULE = 5
_NAME = re.compile(r"^[\.\-_A-Za-z0-9]{1,64}$")
_LIST_MAX = 100
_INPUT_MAX = 8192
_STATES = ("ENABLED", "DISABLED")
_LAMBDA_ARN = re.compile(r"^arn:aws[a-zA-Z-]*:lambda:[a-z0-9-]+:\d{12}:function:[^:]+(:[^:]+)?$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS event_rules (
    name TEXT PRIMARY KEY,
    schedule TEXT NOT NULL,
    state TEXT NOT NULL,
    description TEXT,
    anchor REAL NOT NULL,
    last_fired REAL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS event_targets (
    rule TEXT NOT NULL REFERENCES event_rules(name) ON DELETE CASCADE,
    id TEXT NOT NULL,
    arn TEXT NOT NULL,
    input TEXT,
    PRIMARY KEY (rule, id)
);
"""


# -- errors -----------------------------------------------------------------------------------


class EventsApiError(LambdaApiError):
    """An EventBridge error: HTTP 400, rendered as {"__type": code, "message": ...}."""

    code = "ValidationException"
    status = 400
    message_key = "message"


class ResourceNotFoundException(EventsApiError):
    code = "ResourceNotFoundException"


class ValidationException(EventsApiError):
    code = "ValidationException"


class LimitExceededException(EventsApiError):
    code = "LimitExceededException"


# -- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    name: str
    schedule: str
    state: str
    description: str | None
    anchor: float
    last_fired: float | None
    created: float

    @property
    def enabled(self) -> bool:
        return self.state == "ENABLED"


@dataclass(frozen=True)
class Target:
    rule: str
    id: str
    arn: str
    input: str | None


def rule_arn(region: str, account: str, name: str) -> str:
    return f"arn:aws:events:{region}:{account}:rule/{name}"


def function_target(arn: str) -> tuple[str, str]:
    """(function name, qualifier) of a target's Lambda ARN."""
    ref = parse_function_name(arn, "Arn")
    return ref.name, ref.qualifier or "$LATEST"


class RuleStore:
    """Rules and targets in the shared database."""

    _RULE_COLUMNS = "name, schedule, state, description, anchor, last_fired, created"

    def __init__(self, db: Database) -> None:
        self._db = db
        with db.lock:
            db.conn.executescript(_SCHEMA)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; statements other stores issue inside it join it."""
        conn = self._db.conn
        with self._db.lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def get(self, name: str) -> Rule | None:
        with self._db.lock:
            row = self._db.conn.execute(
                f"SELECT {self._RULE_COLUMNS} FROM event_rules WHERE name = ?", (name,)
            ).fetchone()
        return Rule(*row) if row else None

    def list_rules(self, prefix: str = "", after: str = "", limit: int = -1) -> list[Rule]:
        with self._db.lock:
            rows = self._db.conn.execute(
                f"SELECT {self._RULE_COLUMNS} FROM event_rules WHERE substr(name, 1, ?) = ?"
                " AND name > ? ORDER BY name LIMIT ?", (len(prefix), prefix, after, limit)
            ).fetchall()
        return [Rule(*row) for row in rows]

    def put(self, rule: Rule) -> None:
        with self._db.lock:
            self._db.conn.execute(
                f"INSERT INTO event_rules ({self._RULE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET schedule = excluded.schedule,"
                " state = excluded.state, description = excluded.description,"
                " anchor = excluded.anchor",
                (rule.name, rule.schedule, rule.state, rule.description, rule.anchor,
                 rule.last_fired, rule.created))

    def set_state(self, name: str, state: str) -> None:
        with self._db.lock:
            self._db.conn.execute("UPDATE event_rules SET state = ? WHERE name = ?",
                                  (state, name))

    def delete(self, name: str) -> None:
        with self._db.lock:
            self._db.conn.execute("DELETE FROM event_rules WHERE name = ?", (name,))

    def mark_fired(self, name: str, at: float) -> None:
        with self._db.lock:
            self._db.conn.execute("UPDATE event_rules SET last_fired = ? WHERE name = ?",
                                  (at, name))

    def targets(self, rule: str) -> list[Target]:
        with self._db.lock:
            rows = self._db.conn.execute(
                "SELECT rule, id, arn, input FROM event_targets WHERE rule = ? ORDER BY id",
                (rule,)).fetchall()
        return [Target(*row) for row in rows]

    def put_targets(self, targets: list[Target]) -> None:
        with self.transaction():
            self._db.conn.executemany(
                "INSERT OR REPLACE INTO event_targets (rule, id, arn, input) VALUES (?, ?, ?, ?)",
                [(t.rule, t.id, t.arn, t.input) for t in targets])

    def remove_targets(self, rule: str, ids: list[str]) -> None:
        with self._db.lock:
            self._db.conn.executemany("DELETE FROM event_targets WHERE rule = ? AND id = ?",
                                      [(rule, i) for i in ids])


# -- the API ----------------------------------------------------------------------------------


def _string(params: dict[str, Any], key: str, required: bool = False) -> str | None:
    value = params.get(key)
    if value is None:
        if required:
            raise ValidationException(
                f"1 validation error detected: Value null at '{key[0].lower()}{key[1:]}' "
                "failed to satisfy constraint: Member must not be null")
        return None
    if not isinstance(value, str):
        raise ValidationException(f"{key} must be a string.")
    return value


def _name(params: dict[str, Any], key: str) -> str:
    value = _string(params, key, required=True)
    assert value is not None
    if not _NAME.match(value):
        raise ValidationException(
            f"1 validation error detected: Value '{value}' at '{key[0].lower()}{key[1:]}' "
            "failed to satisfy constraint: Member must satisfy regular expression pattern: "
            "[\\.\\-_A-Za-z0-9]+")
    return value


def _limit(params: dict[str, Any]) -> int:
    value = params.get("Limit", _LIST_MAX)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _LIST_MAX:
        raise ValidationException(
            f"1 validation error detected: Value '{value}' at 'limit' failed to satisfy "
            f"constraint: Member must have value between 1 and {_LIST_MAX}")
    return value


def _token(params: dict[str, Any]) -> str:
    token = params.get("NextToken")
    if not token:
        return ""
    try:
        return base64.urlsafe_b64decode(str(token).encode()).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise ValidationException("The NextToken is not valid.") from exc


def _encode_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode()


class EventsApi:
    """`handle(operation, params)` for the `AWSEvents` JSON 1.1 target prefix."""

    def __init__(self, store: RuleStore, region: str, account: str,
                 clock: Callable[[], float] = time.time,
                 on_change: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.region = region
        self.account = account
        self.clock = clock
        self.on_change = on_change or (lambda name: None)

    def handle(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        method = getattr(self, f"op_{operation}", None)
        if method is None:
            raise UnknownOperationException(f"Unknown operation AWSEvents.{operation}")
        self._check_bus(params)
        result: dict[str, Any] = method(params)
        return result

    def _check_bus(self, params: dict[str, Any]) -> None:
        bus = params.get("EventBusName")
        if bus is None:
            return
        name = str(bus).rsplit("/", 1)[-1] if str(bus).startswith("arn:") else str(bus)
        if name != DEFAULT_BUS:
            raise ResourceNotFoundException(f"Event bus {name} does not exist.")

    def _rule(self, name: str) -> Rule:
        rule = self.store.get(name)
        if rule is None:
            raise ResourceNotFoundException(
                f"Rule {name} does not exist on EventBus {DEFAULT_BUS}.")
        return rule

    def arn(self, name: str) -> str:
        return rule_arn(self.region, self.account, name)

    def _render(self, rule: Rule) -> dict[str, Any]:
        out: dict[str, Any] = {"Name": rule.name, "Arn": self.arn(rule.name),
                               "State": rule.state, "ScheduleExpression": rule.schedule,
                               "EventBusName": DEFAULT_BUS}
        if rule.description:
            out["Description"] = rule.description
        return out

    # rules --------------------------------------------------------------------------------------
    def op_PutRule(self, params: dict[str, Any]) -> dict[str, Any]:
        name = _name(params, "Name")
        if params.get("EventPattern") is not None:
            raise ValidationException(
                "Corral supports scheduled rules only: EventPattern is not supported.")
        expression = _string(params, "ScheduleExpression")
        if not expression:
            raise ValidationException(
                "Parameter ScheduleExpression is required: Corral supports scheduled rules "
                "only.")
        try:
            parse(expression)
        except ScheduleError as exc:
            raise ValidationException(
                f"Parameter ScheduleExpression is not valid. {exc}") from exc
        state = _string(params, "State") or "ENABLED"
        if state not in _STATES:
            raise ValidationException(
                f"1 validation error detected: Value '{state}' at 'state' failed to satisfy "
                "constraint: Member must satisfy enum value set: [ENABLED, DISABLED]")
        description = _string(params, "Description")
        if description is not None and len(description) > 512:
            raise ValidationException("Description must be at most 512 characters.")
        now = self.clock()
        current = self.store.get(name)
        if current is not None and current.schedule == expression.strip():
            anchor = current.anchor
        else:
            anchor = now
        self.store.put(Rule(name, expression.strip(), state, description, anchor, None,
                            current.created if current else now))
        self.on_change(name)
        return {"RuleArn": self.arn(name)}

    def op_DescribeRule(self, params: dict[str, Any]) -> dict[str, Any]:
        rule = self._rule(_name(params, "Name"))
        return {**self._render(rule), "CreatedBy": self.account}

    def op_DeleteRule(self, params: dict[str, Any]) -> dict[str, Any]:
        name = _name(params, "Name")
        if self.store.get(name) is None:
            return {}
        if self.store.targets(name):
            raise ValidationException("Rule can't be deleted since it has targets.")
        self.store.delete(name)
        self.on_change(name)
        return {}

    def op_ListRules(self, params: dict[str, Any]) -> dict[str, Any]:
        prefix = _string(params, "NamePrefix") or ""
        limit = _limit(params)
        rules = self.store.list_rules(prefix, _token(params), limit + 1)
        out: dict[str, Any] = {"Rules": [self._render(r) for r in rules[:limit]]}
        if len(rules) > limit:
            out["NextToken"] = _encode_token(rules[limit - 1].name)
        return out

    def _set_state(self, params: dict[str, Any], state: str) -> dict[str, Any]:
        rule = self._rule(_name(params, "Name"))
        if rule.state != state:
            self.store.set_state(rule.name, state)
            self.on_change(rule.name)
        return {}

    def op_EnableRule(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._set_state(params, "ENABLED")

    def op_DisableRule(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._set_state(params, "DISABLED")

    # targets ------------------------------------------------------------------------------------
    def _target(self, rule: str, entry: Any) -> Target:
        if not isinstance(entry, dict):
            raise ValidationException("Each target must be an object.")
        target_id = _name(entry, "Id")
        arn = _string(entry, "Arn", required=True)
        assert arn is not None
        if not _LAMBDA_ARN.match(arn):
            raise ValidationException(
                f"Parameter(s) Arn is not valid: {arn}. Corral schedules invoke Lambda "
                "functions: use a function ARN.")
        try:
            function_target(arn)
        except InvalidParameterValueException as exc:
            raise ValidationException(f"Parameter(s) Arn is not valid: {arn}.") from exc
        if entry.get("InputPath") is not None or entry.get("InputTransformer") is not None:
            raise ValidationException("Corral supports Input only (not InputPath or "
                                      "InputTransformer).")
        text = _string(entry, "Input")
        if text is not None:
            if len(text) > _INPUT_MAX:
                raise ValidationException(f"Input must be at most {_INPUT_MAX} characters.")
            try:
                json.loads(text)
            except ValueError as exc:
                raise ValidationException(
                    f"Parameter(s) Input is not valid JSON for target {target_id}.") from exc
        return Target(rule, target_id, arn, text)

    def op_PutTargets(self, params: dict[str, Any]) -> dict[str, Any]:
        rule = self._rule(_name(params, "Rule"))
        entries = params.get("Targets")
        if not isinstance(entries, list) or not 1 <= len(entries) <= 100:
            raise ValidationException("Targets must be a list of 1 to 100 targets.")
        targets = [self._target(rule.name, entry) for entry in entries]
        ids = {t.id for t in self.store.targets(rule.name)} | {t.id for t in targets}
        if len(ids) > MAX_TARGETS_PER_RULE:
            raise LimitExceededException(
                f"The requested resource exceeds the maximum number allowed: a rule has at "
                f"most {MAX_TARGETS_PER_RULE} targets.")
        self.store.put_targets(targets)
        return {"FailedEntryCount": 0, "FailedEntries": []}

    def op_RemoveTargets(self, params: dict[str, Any]) -> dict[str, Any]:
        rule = self._rule(_name(params, "Rule"))
        ids = params.get("Ids")
        if not isinstance(ids, list) or not 1 <= len(ids) <= 100 or not all(
                isinstance(i, str) for i in ids):
            raise ValidationException("Ids must be a list of 1 to 100 target IDs.")
        self.store.remove_targets(rule.name, ids)
        return {"FailedEntryCount": 0, "FailedEntries": []}

    def op_ListTargetsByRule(self, params: dict[str, Any]) -> dict[str, Any]:
        rule = self._rule(_name(params, "Rule"))
        limit = _limit(params)
        after = _token(params)
        targets = [t for t in self.store.targets(rule.name) if t.id > after]
        out: dict[str, Any] = {"Targets": []}
        for target in targets[:limit]:
            entry = {"Id": target.id, "Arn": target.arn}
            if target.input is not None:
                entry["Input"] = target.input
            out["Targets"].append(entry)
        if len(targets) > limit:
            out["NextToken"] = _encode_token(targets[limit - 1].id)
        return out
