"""Generate the events' JSON Schemas from the domain model; keep their registry in step.

    python scripts/generate_event_schemas.py          # write events/schemas/*.json, registry.yaml
    python scripts/generate_event_schemas.py --check  # exit 1 if either is out of date

Each schema describes the whole EventBridge event (the envelope with ``detail-type``, ``source``,
``time``... and ``detail``), as the schema registry's own discovered schemas do, in JSON Schema
draft 4 (the registry's ``JSONSchemaDraft4`` type): pydantic writes draft 2020-12, so ``$defs``
become ``definitions`` and ``const`` becomes a one-value ``enum``.

The schema registry's template (``events/schemas/registry.yaml``, a nested application of
template.yaml) carries the same JSON in its ``AWS::EventSchemas::Schema`` resources; each
``Content:`` line follows a ``# generated from events/schemas/<name>.json`` comment, and this script
rewrites that line.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from imagegen_common.models import (
    IMAGE_GENERATION_PROGRESS,
    RESULT_EVENT_DETAILS,
    ImageGenerationProgressDetail,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMAS_DIR = REPO_ROOT / "events" / "schemas"
TEMPLATE = REPO_ROOT / "events" / "schemas" / "registry.yaml"

PUBLISHED_EVENT_DETAILS: dict[str, type[BaseModel]] = {
    **RESULT_EVENT_DETAILS,
    # Not a result: any number per job before its one result event.
    IMAGE_GENERATION_PROGRESS: ImageGenerationProgressDetail,
}
"""Every detail-type we put on the bus, with the model of its ``detail``."""

EVENTS: dict[str, tuple[str, type[BaseModel]]] = {
    detail_type.lower().replace(" ", "_"): (detail_type, model)
    for detail_type, model in PUBLISHED_EVENT_DETAILS.items()
}
"""Schema name ("image_generated", the file's stem) -> (detail-type, detail model)."""

_CONTENT_LINE = re.compile(
    r"(?P<marker>^[ \t]*# generated from events/schemas/(?P<name>[a-z_]+)\.json\n)"
    r"(?P<indent>[ \t]*)Content: .*$",
    re.MULTILINE,
)


def _to_draft4(node: Any) -> Any:
    """Rewrite the draft 2020-12 keywords pydantic emits into their draft 4 equivalents."""
    if isinstance(node, list):
        return [_to_draft4(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$defs":
            converted["definitions"] = _to_draft4(value)
        elif key == "$ref" and isinstance(value, str):
            converted["$ref"] = value.replace("#/$defs/", "#/definitions/")
        elif key == "const":
            converted["enum"] = [value]
        else:
            converted[key] = _to_draft4(value)
    return converted


def event_schema(detail_type: str, detail_model: type[BaseModel]) -> dict[str, Any]:
    """The draft 4 JSON Schema of a whole EventBridge event whose ``detail`` is ``detail_model``."""
    detail = detail_model.model_json_schema(mode="serialization")
    definitions = detail.pop("$defs", {})
    definitions[detail_model.__name__] = detail
    string = {"type": "string"}
    return _to_draft4(
        {
            "$schema": "http://json-schema.org/draft-04/schema#",
            "title": detail_model.__name__.removesuffix("Detail"),
            "description": f'EventBridge event with detail-type "{detail_type}" '
            "(source: the stack's EventSource parameter, imagegen by default).",
            "type": "object",
            "required": [
                "version",
                "id",
                "detail-type",
                "source",
                "account",
                "time",
                "region",
                "resources",
                "detail",
            ],
            "properties": {
                "version": string,
                "id": string,
                "detail-type": {"type": "string", "enum": [detail_type]},
                "source": string,
                "account": string,
                "time": {"type": "string", "format": "date-time"},
                "region": string,
                "resources": {"type": "array", "items": string},
                "detail": {"$ref": f"#/$defs/{detail_model.__name__}"},
            },
            "$defs": definitions,
        }
    )


def schema_files() -> dict[str, str]:
    """File name -> file text for every event schema."""
    return {
        f"{name}.json": json.dumps(event_schema(detail_type, model), indent=2, sort_keys=True)
        + "\n"
        for name, (detail_type, model) in EVENTS.items()
    }


def _yaml_single_quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def render_template(template_text: str) -> str:
    """The template with each generated ``Content:`` line set to its schema's compact JSON."""
    found: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in EVENTS:
            raise SystemExit(f"{TEMPLATE.name} names an unknown schema: {name}.json")
        found.add(name)
        detail_type, model = EVENTS[name]
        schema = event_schema(detail_type, model)
        compact = json.dumps(schema, sort_keys=True, separators=(",", ":"))
        return f"{match['marker']}{match['indent']}Content: {_yaml_single_quoted(compact)}"

    rendered = _CONTENT_LINE.sub(replace, template_text)
    missing = set(EVENTS) - found
    if missing:
        raise SystemExit(f"{TEMPLATE.name} has no generated Content for: {sorted(missing)}")
    return rendered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report drift instead of writing")
    args = parser.parse_args(argv)

    stale: list[str] = []
    for file_name, text in schema_files().items():
        path = SCHEMAS_DIR / file_name
        if not path.exists() or path.read_text() != text:
            stale.append(str(path.relative_to(REPO_ROOT)))
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    template_text = TEMPLATE.read_text()
    rendered = render_template(template_text)
    if rendered != template_text:
        stale.append(str(TEMPLATE.relative_to(REPO_ROOT)))
        if not args.check:
            TEMPLATE.write_text(rendered)

    verb = "out of date" if args.check else "written"
    for path_name in stale:
        print(f"{verb}: {path_name}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
