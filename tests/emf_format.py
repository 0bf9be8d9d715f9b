"""CloudWatch's embedded metric format, as its specification states it, to check the container's EMF lines against.

A JSON Schema of the document's structure (CloudWatch's "Specification: Embedded metric format": the
``_aws`` metadata object, the MetricDirective and MetricDefinition objects, their limits and the unit
names), plus the rules a schema cannot state: every dimension a directive names and every metric it
defines is a member of the root, a dimension's value is a string, a metric's value a number or an
array of at most 100 numbers.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema

UNITS = [
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
]
SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["_aws"],
    "properties": {
        "_aws": {
            "type": "object",
            "required": ["Timestamp", "CloudWatchMetrics"],
            "properties": {
                "Timestamp": {"type": "integer", "minimum": 0},
                "CloudWatchMetrics": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["Namespace", "Dimensions", "Metrics"],
                        "additionalProperties": False,
                        "properties": {
                            "Namespace": {"type": "string", "minLength": 1, "maxLength": 1024, "pattern": "[^\\s]"},
                            "Dimensions": {
                                "type": "array",
                                "items": {
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": 30,
                                    "items": {"type": "string", "minLength": 1, "maxLength": 250},
                                },
                            },
                            "Metrics": {
                                "type": "array",
                                "maxItems": 100,
                                "items": {
                                    "type": "object",
                                    "required": ["Name"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "Name": {"type": "string", "minLength": 1, "maxLength": 1024},
                                        "Unit": {"enum": UNITS},
                                        "StorageResolution": {"enum": [1, 60]},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        }
    },
}


def problems(line: str) -> list[str]:
    """Everything wrong with one log line as an EMF document (none: CloudWatch extracts its metrics)."""
    try:
        document = json.loads(line)
    except ValueError as exc:
        return [f"not JSON: {exc}"]
    found = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(document)]
    if found:
        return found
    for directive in document["_aws"]["CloudWatchMetrics"]:
        for dimension in (d for dimension_set in directive["Dimensions"] for d in dimension_set):
            value = document.get(dimension)
            if not isinstance(value, str) or not 1 <= len(value) <= 1024:
                found.append(f"dimension {dimension}: {value!r} is not a string of 1-1024 characters at the root")
        for metric in directive["Metrics"]:
            value = document.get(metric["Name"])
            values = value if isinstance(value, list) else [value]
            if not values or len(values) > 100 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                found.append(f"metric {metric['Name']}: {value!r} is not a number or an array of 1-100 numbers at the root")
    return found


def documents(text: str) -> list[dict[str, Any]]:
    """The EMF lines of a log (lines that are JSON objects with an ``_aws`` member), parsed."""
    out = []
    for line in text.splitlines():
        if line.startswith('{"_aws"'):
            assert problems(line) == [], (line[:300], problems(line))
            out.append(json.loads(line))
    return out
