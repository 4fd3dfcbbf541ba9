"""The API's body rules as a plain function: media types, depth, numbers, the object rule."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import import_function

# functions/api/json_body.py, imported as the API's cold start imports it; the refusals it raises
# are the classes of that same import.
json_body = import_function("api", "json_body")
MAX_JSON_DEPTH, MAX_NUMBER_CHARS = json_body.MAX_JSON_DEPTH, json_body.MAX_NUMBER_CHARS
exceeds_depth, is_json_media_type, read_json_object = (
    json_body.exceeds_depth,
    json_body.is_json_media_type,
    json_body.read_json_object,
)
InvalidRequestError, MalformedBodyError, UnsupportedMediaTypeError = (
    json_body.InvalidRequestError,
    json_body.MalformedBodyError,
    json_body.UnsupportedMediaTypeError,
)


@pytest.mark.parametrize(
    ("content_type", "is_json"),
    [
        (None, True),
        ("", True),
        ("  ", True),
        ("application/json", True),
        ("Application/JSON; charset=UTF-8", True),
        ("application/merge-patch+json", True),
        ("application/vnd.imagegen.v1+json;q=1", True),
        ("application/jsonp", False),
        ("text/json+plain", False),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("+json", False),
    ],
)
def test_json_media_types(content_type: str | None, is_json: bool) -> None:
    assert is_json_media_type(content_type) is is_json


def test_depth_counts_nesting_not_brackets_inside_strings() -> None:
    inside_strings = '{"a": "' + "[" * 100 + '", "b": "\\"' + "{" * 100 + '"}'
    assert not exceeds_depth(inside_strings, 2)
    assert read_json_object(None, inside_strings)["a"] == "[" * 100

    nested = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    assert exceeds_depth(nested, MAX_JSON_DEPTH)
    assert not exceeds_depth("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, MAX_JSON_DEPTH)
    # Many siblings are not depth.
    assert not exceeds_depth("[" + ",".join(["[]"] * 1000) + "]", 2)


def test_depth_far_beyond_the_recursion_limit_is_refused_not_raised() -> None:
    deep = "[" * (sys.getrecursionlimit() * 20) + "]" * (sys.getrecursionlimit() * 20)
    with pytest.raises(MalformedBodyError) as refused:
        read_json_object("application/json", deep)
    assert refused.value.fields[0].rule == "json_depth"


@pytest.mark.parametrize(
    "literal", ["9" * (MAX_NUMBER_CHARS + 1), "-" + "9" * 5000, "1." + "0" * 60, "1e400", "-1e400"]
)
def test_overlong_or_out_of_range_numbers_are_refused(literal: str) -> None:
    with pytest.raises(MalformedBodyError) as refused:
        read_json_object(None, '{"seed": ' + literal + "}")
    assert refused.value.fields[0].rule == "json_number"


def test_numbers_within_the_limit_are_read() -> None:
    body = '{"seed": 4294967294, "x": -1.5e3, "y": ' + "9" * MAX_NUMBER_CHARS + "}"
    assert read_json_object(None, body)["seed"] == 4294967294


@pytest.mark.parametrize("body", ["[]", "[{}]", '"x"', "1", "true", "null"])
def test_only_an_object_is_a_body(body: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        read_json_object(None, body)
    assert refused.value.fields[0].rule == "object_type"
    assert refused.value.http_status == 422


def test_base64_body_that_is_not_utf8_json_is_invalid_json() -> None:
    with pytest.raises(MalformedBodyError) as refused:
        read_json_object(None, "//79", is_base64_encoded=True)  # bytes ff fe fd
    assert refused.value.fields[0].rule == "json_invalid"


def test_other_media_type_is_415_naming_the_header() -> None:
    with pytest.raises(UnsupportedMediaTypeError) as refused:
        read_json_object("text/plain; charset=utf-8", '{"prompt": "x"}')
    field = refused.value.fields[0]
    assert (field.field, field.in_, field.rule) == ("Content-Type", "header", "media_type")
    assert refused.value.http_status == 415
