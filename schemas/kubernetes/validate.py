"""Validates Kubernetes manifests against the strict schemas in this folder, offline.

    python3 schemas/kubernetes/validate.py FILE...

Each FILE holds one or more documents: YAML (multi-document, `---` separated; needs PyYAML) or
JSON (one object, or an array of objects). The schema is chosen by (apiVersion, kind):

    batch/v1             Job     job-batch-v1.json
    v1                   Service service-v1.json
    kubeflow.org/v2beta1 MPIJob  mpijob-kubeflow-v2beta1.json

Anything else is an error. Prints `ok FILE#n Kind name` per valid document and one line per
error (document, JSON path, message); exits 1 if any document is invalid or unreadable.
Formats (int32, date-time, ...) are not checked, as in kubeconform.
"""

import json
import pathlib
import sys

import jsonschema
from referencing import Registry

try:
    import yaml
except ImportError:
    yaml = None

here = pathlib.Path(__file__).parent
SCHEMAS = {
    ("batch/v1", "Job"): "job-batch-v1.json",
    ("v1", "Service"): "service-v1.json",
    ("kubeflow.org/v2beta1", "MPIJob"): "mpijob-kubeflow-v2beta1.json",
}
_validators = {}


def has_ref(node):
    if isinstance(node, dict):
        return "$ref" in node or any(has_ref(v) for v in node.values())
    if isinstance(node, list):
        return any(has_ref(v) for v in node)
    return False


def validator(name):
    if name not in _validators:
        schema = json.loads((here / name).read_text())
        # The files are standalone; an empty registry (no retrieval) makes sure nothing is
        # ever fetched over the network even if that changed.
        if has_ref(schema):
            sys.exit(f"{name}: contains $ref; the vendored schemas must be standalone")
        # The draft the schema declares; Draft 7 when it declares none that jsonschema knows
        # (the kubernetes-json-schema files say "http://json-schema.org/schema#").
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
        cls.check_schema(schema)
        _validators[name] = cls(schema, registry=Registry())
    return _validators[name]


if yaml is not None:

    class _Loader(yaml.SafeLoader):
        """SafeLoader that keeps unquoted timestamps as strings, as Kubernetes reads them."""

    _Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


def documents(path):
    text = pathlib.Path(path).read_text()
    try:
        data = json.loads(text)
    except ValueError:
        if yaml is None:
            raise ValueError(
                "not JSON, and PyYAML is not installed (pip install pyyaml), so YAML "
                "cannot be read; only JSON files are accepted without it"
            )
        return list(yaml.load_all(text, Loader=_Loader))
    return data if isinstance(data, list) else [data]


def short(message, limit=400):
    return message if len(message) <= limit else message[: limit - 3] + "..."


def main(paths):
    if not paths:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    bad = 0
    for path in paths:
        try:
            docs = documents(path)
        except Exception as e:  # unreadable file, YAML/JSON syntax error
            print(f"error {path}: {' '.join(str(e).split())}")
            bad += 1
            continue
        for n, doc in enumerate(docs, 1):
            where = f"{path}#{n}"
            if doc is None:  # an empty document, e.g. after a trailing `---`
                continue
            if not isinstance(doc, dict):
                print(f"error {where}: not an object ({type(doc).__name__})")
                bad += 1
                continue
            key = (doc.get("apiVersion"), doc.get("kind"))
            if key not in SCHEMAS:
                print(f"error {where}: no schema for apiVersion {key[0]!r} kind {key[1]!r}")
                bad += 1
                continue
            meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
            name = meta.get("name") or meta.get("generateName") or "-"
            errors = sorted(
                validator(SCHEMAS[key]).iter_errors(doc), key=lambda e: list(e.absolute_path)
            )
            if not errors:
                print(f"ok {where} {key[1]} {name}")
                continue
            bad += 1
            for e in errors:
                message = e.message
                if e.context:  # oneOf / anyOf: name the closest alternative's failure
                    best = jsonschema.exceptions.best_match(e.context)
                    message += f" (closest: {best.message} at {best.json_path})"
                print(f"invalid {where} {key[1]} {name}: {e.json_path}: {short(message)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
