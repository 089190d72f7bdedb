"""Validates OpenLineage run events (JSON Lines) against the schemas in this folder.

    python3 validate.py EVENTS.jsonl

Each event is checked against OpenLineage.json, and each facet it carries against its own
schema (found by the facet's _schemaURL). Exits non-zero naming the first invalid event.
"""

import json
import pathlib
import sys

import jsonschema
from referencing import Registry, Resource

here = pathlib.Path(__file__).parent
schemas = {}
for path in here.glob("*.json"):
    schema = json.loads(path.read_text())
    schemas[schema["$id"]] = schema
registry = Registry().with_resources(
    (uri, Resource.from_contents(schema)) for uri, schema in schemas.items()
)
core = schemas["https://openlineage.io/spec/2-0-2/OpenLineage.json"]
checker = jsonschema.FormatChecker()


def check(instance, url, where):
    base, _, pointer = url.partition("#")
    if base not in schemas:
        sys.exit(f"{where}: no schema for {url}")
    schema = {"$ref": url}
    jsonschema.Draft202012Validator(
        schema, registry=registry, format_checker=checker
    ).validate(instance)


lines = pathlib.Path(sys.argv[1]).read_text().splitlines()
if not lines:
    sys.exit("no events")
for n, line in enumerate(lines, 1):
    event = json.loads(line)
    where = f"event {n} ({event.get('eventType')} {event.get('job', {}).get('name')})"
    try:
        check(event, core["$id"], where)
        facets = list(event["run"].get("facets", {}).values())
        for dataset in event.get("inputs", []) + event.get("outputs", []):
            facets += list(dataset.get("facets", {}).values())
        for facet in facets:
            check(facet, facet["_schemaURL"], where)
    except jsonschema.ValidationError as e:
        sys.exit(f"{where}: {e.message} at {list(e.absolute_path)}")
print(f"{len(lines)} events valid")
