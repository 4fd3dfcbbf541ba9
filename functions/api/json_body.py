"""The body rules of the API: which media types are read as JSON, and which JSON is read at all.

A request body is at most :data:`MAX_BODY_BYTES` (413 ``max_bytes``: a request needs a few KB,
and a proxy, WAF or log need not see 10 MB of padding). It is read as JSON when its Content-Type
is missing, ``application/json`` or any ``type/subtype+json`` (parameters such as ``charset`` are
ignored); anything else is 415. The text must be JSON (400 ``json_invalid``), nested at most
:data:`MAX_JSON_DEPTH` deep (400 ``json_depth``), with no number literal longer than
:data:`MAX_NUMBER_CHARS` characters or out of a float's range (400 ``json_number``), no key twice
in one object (400 ``json_duplicate_key``: a proxy or a log that reads the first value would see
another request than the one run), and its top level must be an object (422 ``object_type``).
Only then does the route's model validate the fields (422, each bad field with its rule).

These rules exist because the standard parser alone is not safe on a public endpoint: input
nested ~1,000 deep raises ``RecursionError`` and an integer past Python's int-string limit (4,300
digits) raises ``ValueError``. Depth is counted on the text, without recursion, before parsing.

The routes read their bodies here themselves (``read_request``) rather than through powertools'
request validation, which reads form and multipart bodies too, validates an array by its first
element and lets those errors escape as 5xx; it still validates the path, query and headers.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from typing import Any, NoReturn, TypeVar

from pydantic import BaseModel, ValidationError

from imagegen_common.models import FieldError
from refusals import (
    InvalidRequestError,
    MalformedBodyError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)

Model = TypeVar("Model", bound=BaseModel)

MAX_BODY_BYTES = 64 * 1024
"""Largest body read: a request of the longest prompts, escaped, and a webhook is under 20 KB."""

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects read; a request body needs 1."""
MAX_NUMBER_CHARS = 50
"""Longest number literal read; far beyond any seed or size, far below the int-string limit."""
ACCEPTED_MEDIA_TYPES = "application/json (or any */*+json type, or no Content-Type)"

_JSON_MEDIA_TYPE = re.compile(r"^(application/json|[\w.+-]+/[\w.+-]+\+json)$", re.ASCII)
# A JSON string (with its escapes) or one bracket: strings are skipped whole, so brackets inside
# them are not counted.
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


def is_json_media_type(content_type: str | None) -> bool:
    """Whether a Content-Type header value means JSON (missing or empty counts as JSON)."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return not media_type or bool(_JSON_MEDIA_TYPE.match(media_type))


def read_request(model: type[Model], event: Any) -> Model:
    """The body of an API Gateway proxy event as ``model``, by the rules above; an ApiRefusal
    (400, 413, 415 or 422 naming each bad field and its rule) otherwise."""
    headers: Mapping[str, str] = event.get("headers") or {}
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    document = read_json_object(content_type, event.get("body"), bool(event.get("isBase64Encoded")))
    try:
        return model.model_validate(document)
    except ValidationError as error:
        raise InvalidRequestError(
            [
                FieldError(
                    field=".".join(str(part) for part in problem["loc"]) or "body",
                    in_="body",
                    rule=problem["type"],
                    message=problem["msg"],
                )
                for problem in error.errors(include_url=False)
            ]
        ) from error


def read_json_object(
    content_type: str | None, body: str | None, is_base64_encoded: bool = False
) -> dict[str, Any]:
    """The request body as a JSON object, by the rules above; raises an ApiRefusal otherwise."""
    if body and _length_in_bytes(body, is_base64_encoded) > MAX_BODY_BYTES:
        raise PayloadTooLargeError(_length_in_bytes(body, is_base64_encoded), MAX_BODY_BYTES)
    if not is_json_media_type(content_type):
        media_type = (content_type or "").split(";", 1)[0].strip()
        raise UnsupportedMediaTypeError(media_type, ACCEPTED_MEDIA_TYPES)
    text = _body_text(body, is_base64_encoded)
    if not text.strip():
        raise InvalidRequestError(
            [
                FieldError(
                    field="body", in_="body", rule="missing", message="a JSON object is required"
                )
            ]
        )
    if exceeds_depth(text, MAX_JSON_DEPTH):
        raise MalformedBodyError("json_depth", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        document = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_reject_constant,
            object_pairs_hook=_object_of_unique_keys,
        )
    except json.JSONDecodeError as error:
        raise MalformedBodyError(
            "json_invalid", f"{error.msg} at line {error.lineno} column {error.colno}"
        ) from error
    except RecursionError as error:  # cannot happen below MAX_JSON_DEPTH; never a 5xx if it does
        raise MalformedBodyError("json_depth", "JSON nested too deep") from error
    if not isinstance(document, dict):
        raise InvalidRequestError(
            [
                FieldError(
                    field="body",
                    in_="body",
                    rule="object_type",
                    message=f"the body must be a JSON object, not {_json_type(document)}",
                )
            ]
        )
    return document


def exceeds_depth(text: str, limit: int) -> bool:
    """Whether arrays/objects in ``text`` nest deeper than ``limit``; linear, no recursion."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        first = match.group()[0]
        if first in "[{":
            depth += 1
            if depth > limit:
                return True
        elif first in "]}":
            depth -= 1
    return False


def _length_in_bytes(body: str, is_base64_encoded: bool) -> int:
    if is_base64_encoded:
        return len(body) * 3 // 4  # what it decodes to, without decoding it
    return len(body.encode("utf-8", errors="surrogatepass"))


def _object_of_unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise MalformedBodyError(
                "json_duplicate_key", f"the key {key!r} appears more than once in an object"
            )
        document[key] = value
    return document


def _body_text(body: str | None, is_base64_encoded: bool) -> str:
    if not body:
        return ""
    if not is_base64_encoded:
        return body
    try:
        return base64.b64decode(body, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as error:
        raise MalformedBodyError("json_invalid", "the body is not UTF-8 text") from error


def _check_number_length(literal: str) -> None:
    if len(literal) > MAX_NUMBER_CHARS:
        raise MalformedBodyError(
            "json_number",
            f"a number of {len(literal)} characters; at most {MAX_NUMBER_CHARS} are read",
        )


def _parse_int(literal: str) -> int:
    _check_number_length(literal)
    return int(literal)


def _parse_float(literal: str) -> float:
    _check_number_length(literal)
    value = float(literal)
    if not math.isfinite(value):
        raise MalformedBodyError("json_number", f"the number {literal} is out of range")
    return value


def _reject_constant(name: str) -> NoReturn:
    raise MalformedBodyError("json_invalid", f"{name} is not a JSON value")


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"
