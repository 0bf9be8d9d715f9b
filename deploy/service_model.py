"""Check a request against the service model's ``min``, ``max``, ``pattern`` and ``enum``.

botocore validates every request before sending it, but only types, required members and
minimums: it skips ``max``, ``pattern`` and ``enum``, which the service then enforces with a
``ValidationException`` (a job name of 64 characters, an instance type that does not exist, a
tag value with a ``;``). ``violations()`` walks the operation's input shape in botocore's own
service model (``botocore/data/<service>/*/service-2.json``) and reports each of them.

Patterns are Java regular expressions that must match the whole value; ``deploy.java_regex``
translates them. A pattern it cannot translate is skipped and counted in ``skipped_patterns``
(none of the SageMaker, S3, ECR, STS, KMS, IAM, Logs, Service Quotas or Application Auto
Scaling patterns of botocore 1.44 at the time of writing).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from botocore.model import ListShape, MapShape, OperationModel, Shape, StructureShape

from deploy import java_regex

_NUMBERS = ("integer", "long", "float", "double")
skipped_patterns: dict[str, str] = {}  # pattern -> why it could not be translated


@dataclass(frozen=True)
class Violation:
    path: str  # "ResourceConfig.InstanceType", "Tags[2].Value"
    constraint: str  # "min" | "max" | "pattern" | "enum"
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


@functools.cache
def service(name: str) -> Any:
    """botocore's model of a service (loaded once per process)."""
    import botocore.session

    return botocore.session.get_session().get_service_model(name)


def enum(service_name: str, shape_name: str) -> tuple[str, ...]:
    """The allowed values of an enum shape, e.g. ``enum("sagemaker", "TrainingInstanceType")``."""
    return tuple(service(service_name).shape_for(shape_name).enum)


def violations(operation: OperationModel | tuple[str, str], params: dict[str, Any]) -> list[Violation]:
    """Every ``min``/``max``/``pattern``/``enum`` the request breaks; ``operation`` may be (service, name)."""
    if isinstance(operation, tuple):
        operation = service(operation[0]).operation_model(operation[1])
    shape = operation.input_shape
    return [] if shape is None else list(_walk(shape, params, ""))


def _pattern(source: str) -> re.Pattern[str] | None:
    if source in skipped_patterns:
        return None
    try:
        return java_regex.compiled(source)
    except java_regex.Untranslatable as exc:
        skipped_patterns[source] = str(exc)
        return None


def _length(shape: Shape, size: int, path: str, unit: str) -> Iterator[Violation]:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if low is not None and size < low:
        yield Violation(path, "min", f"{size} {unit}, at least {low} allowed")
    if high is not None and size > high:
        yield Violation(path, "max", f"{size} {unit}, at most {high} allowed")


def _string(shape: Shape, value: str, path: str) -> Iterator[Violation]:
    yield from _length(shape, len(value), path, "characters")
    if shape.enum and value not in shape.enum:
        yield Violation(path, "enum", f"{value!r} is not one of {len(shape.enum)} allowed values (shape {shape.name})")
    source = shape.metadata.get("pattern")
    compiled = _pattern(source) if source else None
    if compiled is not None and not compiled.fullmatch(value):
        yield Violation(path, "pattern", f"{value!r} does not match {source}")


def _number(shape: Shape, value: float, path: str) -> Iterator[Violation]:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if low is not None and value < low:
        yield Violation(path, "min", f"{value} is below the minimum {low}")
    if high is not None and value > high:
        yield Violation(path, "max", f"{value} is above the maximum {high}")


def _walk(shape: Shape, value: Any, path: str) -> Iterator[Violation]:
    """Values of the wrong type are left to botocore's own validator, which names them."""
    if isinstance(shape, StructureShape) and isinstance(value, dict):
        for name, member in shape.members.items():
            if name in value and value[name] is not None:
                yield from _walk(member, value[name], f"{path}.{name}" if path else name)
    elif isinstance(shape, ListShape) and isinstance(value, list | tuple):
        yield from _length(shape, len(value), path, "items")
        for index, item in enumerate(value):
            yield from _walk(shape.member, item, f"{path}[{index}]")
    elif isinstance(shape, MapShape) and isinstance(value, dict):
        yield from _length(shape, len(value), path, "entries")
        for key, item in value.items():
            yield from _walk(shape.key, key, f"{path}.<key {key!r}>")
            yield from _walk(shape.value, item, f"{path}.{key}")
    elif shape.type_name == "string" and isinstance(value, str) and not shape.serialization.get("jsonvalue"):
        yield from _string(shape, value, path)
    elif shape.type_name in _NUMBERS and isinstance(value, int | float) and not isinstance(value, bool):
        yield from _number(shape, value, path)
    elif shape.type_name == "blob" and isinstance(value, bytes | str):
        yield from _length(shape, len(value), path, "bytes")
