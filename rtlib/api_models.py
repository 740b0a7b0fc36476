"""What a request to the REST API (and the widgets, and the magics) may carry, as pydantic models.

Bodies are strict: a field of the wrong JSON type is refused, never coerced
(priority 2.7 is not 2, "3" is not 3), and an unknown field is refused.
Query values arrive as text: they must be plain decimal integers (no 1e3,
1_000 or 5.0). Every integer that reaches the store fits its INTEGER columns
(int4 on PostgreSQL), every string its column and no control character.
`refusal` turns a ValidationError into the ApiError's message and the field
it names. The OpenAPI document is generated from these models.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, StrictInt, StrictStr, ValidationError, WithJsonSchema

from .config import ACCOUNT_RE
from .errors import EndpointError

STORE_INT_MAX = 2**31 - 1  # the store's INTEGER columns: int4 on PostgreSQL
LOCATION_SCHEMA = {  # what _location takes; the OpenAPI document names it Location
    "oneOf": [
        {"type": "object", "required": ["endpoint", "path"], "additionalProperties": False,
         "properties": {"endpoint": {"type": "string", "minLength": 1, "maxLength": 64},
                        "path": {"type": "string", "minLength": 1, "maxLength": 1024, "description": "relative to the endpoint root"}}},
        {"type": "string", "pattern": "^[^:]+:.+", "description": "ENDPOINT:PATH", "examples": ["aps:raw/scan-001.h5"]},
    ]
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DECIMAL = re.compile(r"-?[0-9]+")


def _printable(text: str) -> str:
    if _CONTROL.search(text):
        raise ValueError("must not contain control characters (NUL, newline, tab, ...)")
    return text


def _location(value: Any) -> tuple[str, str]:
    """{endpoint, path} or "ENDPOINT:PATH" -> (endpoint, path)."""
    if isinstance(value, dict):
        if set(value) != {"endpoint", "path"} or not all(isinstance(v, str) and v for v in value.values()):
            raise ValueError('must be {"endpoint": NAME, "path": PATH} with two non-empty strings')
        endpoint, path = value["endpoint"], value["path"]
    elif isinstance(value, str):
        from .jobs import parse_location

        try:
            endpoint, path = parse_location(value)
        except EndpointError as err:
            raise ValueError(str(err)) from None
    else:
        raise ValueError(f"must be {{endpoint, path}} or ENDPOINT:PATH, not {type(value).__name__}")
    if len(endpoint) > 64 or len(path) > 1024:
        raise ValueError("endpoint names are at most 64 characters, paths at most 1024")
    return _printable(endpoint), _printable(path)


def _locations(value: Any) -> list[tuple[str, str]]:
    """One location or a non-empty list of them."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("is empty; give at least one {endpoint, path}")
    return [_location(item) for item in items]


def _account(text: str) -> str:
    if not ACCOUNT_RE.match(text):
        raise ValueError("must be 'project' or 'project::suballocation' (letters, digits, '_', '.', '-')")
    return text


def _finite(value: Any) -> Any:
    """NaN and Infinity (which Python's json accepts) are not JSON numbers: refuse them anywhere in params."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not a JSON number; give a finite number")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _decimal(value: Any) -> Any:
    """A query value: digits only (an optional '-' so that the range check names the bound), and not thousands of them."""
    if isinstance(value, str):
        if not _DECIMAL.fullmatch(value):
            raise ValueError("must be a decimal integer")
        if len(value) > 100:
            raise ValueError("is far too large")
        return int(value)
    return value


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


Location = Annotated[tuple[str, str], PlainValidator(_location), WithJsonSchema(LOCATION_SCHEMA)]
Locations = Annotated[list[tuple[str, str]], PlainValidator(_locations),
                      WithJsonSchema({"oneOf": [LOCATION_SCHEMA, {"type": "array", "items": LOCATION_SCHEMA, "minItems": 1}],
                                      "description": "ENDPOINT:PATH or {endpoint, path}, or a list of them (as the CLI takes it)"})]
Name = Annotated[StrictStr, Field(min_length=1, max_length=64), AfterValidator(_printable)]
Account = Annotated[StrictStr, Field(max_length=128, description="project or project::suballocation",
                                     json_schema_extra={"pattern": ACCOUNT_RE.pattern}), AfterValidator(_account)]
StoreInt = Annotated[StrictInt, Field(ge=-STORE_INT_MAX - 1, le=STORE_INT_MAX)]
Id = Annotated[int, Field(ge=1, le=STORE_INT_MAX, strict=True), BeforeValidator(_decimal)]
Offset = Annotated[int, Field(ge=0, le=STORE_INT_MAX, strict=True), BeforeValidator(_decimal)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SubmitRequest(_Request):
    """A job to submit: exactly one of input, inputs and source; all inputs on one endpoint."""

    workload: Name
    input: Location | None = None
    inputs: Annotated[list[Location], Field(min_length=1)] | None = None
    source: Locations | None = None
    dest: Location | None = Field(None, description="where results go; default results/{workload}/job-{job_id} on the input's endpoint")
    params: Annotated[dict[str, Any], AfterValidator(_finite)] | None = Field(None, description="validated against the workload's schema")
    site: Name | None = Field(None, description="default: local")
    queue: Name | None = None
    account: Account | None = None
    beamline: Name | None = None
    priority: StoreInt | None = Field(None, description="default 0; higher is more urgent")


class TransferRequest(_Request):
    source: Location
    destination: Location


class JobsQuery(_Request):
    """GET /jobs: filter and page."""

    state: Name | None = Field(None, description="a job state (any case), e.g. HELD")
    workload: Name | None = None
    beamline: Name | None = None
    limit: Annotated[int, Field(ge=1, le=500, strict=True), BeforeValidator(_decimal)] = 100
    offset: Offset = 0
    order: Literal["oldest", "newest"] = Field("oldest", description="newest: newest first, offset counted from the newest job")


class EventsQuery(_Request):
    """GET /events: where the stream starts (since, else the Last-Event-ID header) and whose events."""

    since: Offset | None = Field(None, description="send events with an id greater than this one first")
    job_id: Id | None = Field(None, description="only this job's events")
    last_event_id: Offset | None = Field(None, alias="Last-Event-ID")


class IdPath(_Request):
    """The id in /jobs/{job_id} and /transfers/{transfer_id}."""

    job_id: Id | None = None
    transfer_id: Id | None = None


def refusal(err: ValidationError) -> tuple[str, str]:
    """(message, field) of the first problem: the field as the request names it, what is wrong and what it should be."""
    problem = err.errors(include_url=False)[0]
    loc = [str(part) for part in problem["loc"]]
    field = loc[0] if loc else ""
    if field == "params" and len(loc) > 1:
        field = f"params.{loc[1]}"
    if problem["type"] == "extra_forbidden":
        return f"unknown field {field!r}; allowed: {', '.join(_fields(err))}", field
    if problem["type"] == "missing":
        return f"{field} is required", field
    message = problem["msg"].removeprefix("Value error, ")
    return f"{field}: {message[0].lower()}{message[1:]}, got {_short(problem['input'])}", field


def _fields(err: ValidationError) -> list[str]:
    model = {m.__name__: m for m in (SubmitRequest, TransferRequest, JobsQuery, EventsQuery, IdPath)}.get(err.title)
    return sorted(f.alias or name for name, f in model.model_fields.items()) if model else []
