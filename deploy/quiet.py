"""Only our lines on the user's terminal: the SageMaker SDK's and botocore's chatter folded away.

Unquieted, a dry run prints the SDK's telemetry notice, "sagemaker.config INFO - Not applying SDK
defaults ..." twice, six "Ignoring unnecessary instance type: None.", "Found credentials in environment
variables." per client and "Creating training-job with name ..." beside our own ``event=`` lines, and
``import sagemaker`` prints its v2 deprecation banner twice (a warning and a print). The user cannot
tell ours from theirs.

``quiet_sdk()`` sets the SDK's own switches (``SAGEMAKER_SUPPRESS_V2_WARNING``, before any import of
``sagemaker``) and puts one handler on the ``sagemaker`` and ``botocore`` loggers that keeps their
errors, shows each distinct warning once as ``event=sdk_warning`` (minus the known noise), and
counts the rest; ``folded()`` reports the count as one line of ours at debug level. ``verbose=True``
(``--verbose``) leaves the SDK to speak as it does by default.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

from image_classifier.metrics import format_line

log = logging.getLogger("deploy")

LOGGERS = ("sagemaker", "botocore", "boto3", "urllib3")
# warnings that say nothing about the user's run: how the SDK builds requests we never use that way
NOISE = re.compile(
    r"No finished training job found associated with this estimator"
    r"|will collect telemetry"
    r"|Ignoring unnecessary instance type"
    r"|SDK v2, which is on path of deprecation"
)


class _Folding(logging.Handler):
    """Errors through, each distinct useful warning once, the rest counted."""

    def __init__(self) -> None:
        super().__init__(level=logging.NOTSET)
        self.folded = 0
        self._warned: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            log.log(record.levelno, format_line("sdk_error", source=record.name, message=message))
        elif record.levelno >= logging.WARNING and not NOISE.search(message) and message not in self._warned:
            self._warned.add(message)
            log.warning(format_line("sdk_warning", source=record.name, message=message))
        else:
            self.folded += 1


_handler: _Folding | None = None
_decided = False


def quiet_sdk(*, verbose: bool = False) -> None:
    """Before ``import sagemaker``; the first call decides. ``verbose``: only the environment switch, the SDK speaks."""
    global _handler, _decided
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    if _decided:
        return
    _decided = True
    if verbose:
        return
    warnings.filterwarnings("ignore", message=r"You are using the SageMaker Python SDK v2")
    _handler = _Folding()
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(_handler)  # a handler here also stops sagemaker.config adding its own stdout one
        logger.propagate = False
        logger.setLevel(logging.INFO)
    config_logger = logging.getLogger("sagemaker.config")  # its own stdout handler, if sagemaker was imported first
    for handler in list(config_logger.handlers):
        config_logger.removeHandler(handler)
    config_logger.propagate = True


def folded() -> None:
    """One debug line for what was folded away (``--verbose`` shows it all instead)."""
    if _handler is not None and _handler.folded:
        log.debug(format_line("sdk_messages_folded", count=_handler.folded, show="--verbose"))
