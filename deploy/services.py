"""SageMaker Debugger, Profiler and Clarify: services an account may not have.

Debugger is closed to new customers since 2026-07-30, Clarify is "no longer open to new
customers", Profiler support ends 2027-06-30. Each has a mode in the configuration:

- ``auto`` (default): asked for; when SageMaker refuses the create request that carries them,
  the request is sent once more without the ``auto`` parts (one ``event=service_unavailable``
  line each, with AWS's own code and message), and the Clarify step is skipped with one line
  naming the project's own alternative. Only a refusal of that retry is the user's error.
- ``on``: a refusal fails the step, with SageMaker's message.
- ``off``: never requested.

The exact text a closed service returns cannot be observed from an account that has it, so no
text is matched at creation: what counts is the kind of error (``refused_at_creation``). A
refusal of the request itself (validation, access denied, an unknown or unsubscribed feature)
leads to the retry; throttling, server errors (5xx) and quotas never do: they say nothing about
the services, and a retry without them would lose them for a passing reason. A refusal that has
nothing to do with these services costs one extra request, which is refused in turn and fails
the step with AWS's message. What can still be lost: a job that SageMaker accepts and that then
fails because of a service (the Clarify job's failure is recognised by its text:
``failed_as_closed``, a guess).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import ClientError

SERVICES = ("debugger", "profiler", "clarify")
REFUSAL_CODES = frozenset(
    {
        "ValidationException",
        "ValidationError",
        "AccessDeniedException",
        "AccessDenied",
        "UnauthorizedOperation",
        "UnauthorizedException",
        "NotAuthorized",
        "OptInRequired",
        "SubscriptionRequiredException",
        "NotSubscribedException",
        "UnsupportedOperation",
        "UnsupportedOperationException",
        "UnknownOperationException",
        "InvalidAction",
    }
)
REFUSAL_PREFIXES = ("AccessDenied", "Unsupported", "NotSubscribed", "Unauthorized")
NEVER_RETRIED = re.compile(r"(?i)throttl|toomanyrequests|limitexceeded|quota|serviceunavailable|internal(failure|server|error)|slowdown")
CLOSED_WORDS = re.compile(
    r"(?i)\b(not (currently |yet )?(available|enabled|supported|allowed|authori[sz]ed|permitted|subscribed|onboarded|allowlisted|whitelisted)"
    r"|no longer (available|open|supported|accepting|offered)|new customers|discontinued|end of (life|support)|opt[- ]?in|unsupported)\b"
)
CLARIFY_ALTERNATIVE = "per-class metrics and the confusion matrix in the final job's report (deploy/runs/<run>/reports/output/)"


def _code_and_message(error: BaseException) -> tuple[str, str]:
    if isinstance(error, ClientError):
        detail = error.response.get("Error", {})
        return detail.get("Code", ""), detail.get("Message", "")
    return type(error).__name__, str(error)


def refused_at_creation(error: BaseException) -> bool:
    """The create request itself was refused, for a reason a retry without the optional services may remove."""
    if not isinstance(error, ClientError):
        return False
    code, _ = _code_and_message(error)
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 400
    if status >= 500 or NEVER_RETRIED.search(code):
        return False
    return code in REFUSAL_CODES or code.startswith(REFUSAL_PREFIXES)


def failed_as_closed(error: BaseException) -> bool:
    """A job SageMaker accepted that then failed because a service is closed (by its text: the guess)."""
    _, message = _code_and_message(error)
    return bool(CLOSED_WORDS.search(message))


def describe(error: BaseException) -> str:
    code, message = _code_and_message(error)
    return f"error={code} message={message[:500]!r}"


def create_with_fallback(
    create: Callable[[frozenset[str]], Any], modes: Mapping[str, str], say: Callable[[str], None]
) -> tuple[Any, dict[str, str]]:
    """``create(enabled)``; refused at creation with ``auto`` services in it: once more without them.

    Returns what ``create`` returned and each service's outcome: ``on``, ``off`` or ``refused`` (asked
    for, the request refused, left out). A refusal of the retry is raised (the user's error), after
    one ``event=service_retry_refused`` line.
    """
    enabled = frozenset(name for name, mode in modes.items() if mode != "off")
    outcome = {name: "off" for name, mode in modes.items() if mode == "off"}
    try:
        result = create(enabled)
    except ClientError as exc:
        dropped = sorted(name for name in enabled if modes[name] == "auto")
        if not dropped or not refused_at_creation(exc):
            raise
        for name in dropped:
            say(f"event=service_unavailable service={name} mode=auto action=continue_without {describe(exc)}")
            outcome[name] = "refused"
        enabled -= set(dropped)
        try:
            result = create(enabled)
        except ClientError as again:
            say(f"event=service_retry_refused without={','.join(dropped)} {describe(again)}")
            raise
    outcome.update({name: "on" for name in enabled})
    return result, outcome
