"""SageMaker Debugger, Profiler and Clarify: services an account may not have.

Debugger is closed to new customers since 2026-07-30, Clarify is "no longer open to new
customers", Profiler support ends 2027-06-30. Each has a mode in the configuration:

- ``auto`` (default): tried; when SageMaker refuses it, the training job is created again
  without it (one ``event=service_unavailable`` line), and the Clarify step is skipped with
  one line naming the project's own alternative. The run goes on.
- ``on``: a refusal fails the step, with SageMaker's message.
- ``off``: never requested.

The exact error a closed service returns cannot be observed from an account that has it, so
it is matched broadly (the guess, also in docs/aws.md): an AWS error whose code is one of
``CLOSED_CODES`` (or a failed job, for Clarify) and whose message reads like a closed or
unavailable feature (``CLOSED_WORDS``). Where the message names services, only those are
dropped; where it names none, every ``auto`` service in the request is. A permission error
that has nothing to do with these services costs one extra request and then fails as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import ClientError

SERVICES = ("debugger", "profiler", "clarify")
CLOSED_CODES = frozenset(
    {
        "ValidationException",
        "AccessDeniedException",
        "AccessDenied",
        "UnauthorizedOperation",
        "OptInRequired",
        "SubscriptionRequiredException",
        "UnsupportedOperation",
        "UnsupportedOperationException",
        "ResourceLimitExceeded",
    }
)
CLOSED_WORDS = re.compile(
    r"(?i)\b(not (currently |yet )?(available|enabled|supported|allowed|authori[sz]ed|permitted|subscribed|onboarded|allowlisted|whitelisted)"
    r"|no longer (available|open|supported|accepting|offered)|new customers|discontinued|end of (life|support)|opt[- ]?in|unsupported)\b"
)
_NAMES = {
    "debugger": re.compile(r"(?i)debugger|debug ?hook|debug ?rule|smdebug"),
    "profiler": re.compile(r"(?i)profil"),
    "clarify": re.compile(r"(?i)clarify|explainab"),
}
CLARIFY_ALTERNATIVE = "per-class metrics and the confusion matrix in the final job's report (deploy/runs/<run>/reports/output/)"


def _code_and_message(error: BaseException) -> tuple[str, str]:
    if isinstance(error, ClientError):
        detail = error.response.get("Error", {})
        return detail.get("Code", ""), detail.get("Message", "")
    return type(error).__name__, str(error)


def refused(error: BaseException, *, failed_job: bool = False) -> frozenset[str] | None:
    """The services a refusal names (empty: it names none); None when it is not such a refusal."""
    code, message = _code_and_message(error)
    if not (code in CLOSED_CODES or failed_job) or not CLOSED_WORDS.search(message):
        return None
    return frozenset(name for name, pattern in _NAMES.items() if pattern.search(message))


def describe(error: BaseException) -> str:
    code, message = _code_and_message(error)
    return f"error={code} message={message[:300]!r}"


def create_with_fallback(
    create: Callable[[frozenset[str]], Any], modes: Mapping[str, str], say: Callable[[str], None]
) -> tuple[Any, dict[str, str]]:
    """Call ``create(enabled)`` until SageMaker accepts it, dropping refused ``auto`` services.

    Returns what ``create`` returned and each service's outcome: ``on``, ``off`` or ``refused`` (asked
    for, refused by SageMaker, left out).
    """
    enabled = {name for name, mode in modes.items() if mode != "off"}
    outcome = {name: "off" for name, mode in modes.items() if mode == "off"}
    while True:
        try:
            result = create(frozenset(enabled))
            break
        except ClientError as exc:
            named = refused(exc)
            drop = {name for name in enabled if modes[name] == "auto" and (not named or name in named)} if named is not None else set()
            if not drop:
                raise
            for name in sorted(drop):
                say(f"event=service_unavailable service={name} mode=auto action=continue_without {describe(exc)}")
                outcome[name] = "refused"
            enabled -= drop
    outcome.update({name: "on" for name in enabled})
    return result, outcome
