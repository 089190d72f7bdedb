#!/usr/bin/env python3
"""Validates a SageMaker pipeline definition against a copy of the published schema.

    python3 schemas/sagemaker/validate.py SCHEMA.json DEFINITION.json

(The schema is not in this repository: see README.md.)

Exits 0 when valid; otherwise prints each problem with its JSON path and exits 1
(2 when the file or the schema cannot be read, or jsonschema is not installed).
"""
import json
import os
import sys


def main(argv):
    if len(argv) != 3:
        print("usage: validate.py SCHEMA.json DEFINITION.json", file=sys.stderr)
        return 2
    try:
        import jsonschema
    except ImportError:
        print("validate.py: the python package jsonschema is not installed (pip install jsonschema)", file=sys.stderr)
        return 2
    schema_path = argv[1]
    try:
        with open(schema_path) as f:
            schema = json.load(f)
        with open(argv[2]) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        print(f"validate.py: {e}", file=sys.stderr)
        return 2
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    for e in errors:
        path = "/".join(str(p) for p in e.absolute_path) or "(top)"
        # oneOf failures say little; name the deepest reason too.
        best = jsonschema.exceptions.best_match([e])
        print(f"{argv[2]}: at {path}: {e.message[:300]}", file=sys.stderr)
        if best is not e:
            inner = "/".join(str(p) for p in best.absolute_path)
            print(f"  deepest reason at {inner}: {best.message[:300]}", file=sys.stderr)
    if errors:
        print(f"{argv[1]}: {len(errors)} schema problem(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
