"""What the emulator cannot show, played by a proxy in front of it: work in progress and closed services.

moto 5.2.5 completes every SageMaker job and endpoint at once, its SageMaker backend registers
no state-manager transitions (``/moto-api/state-manager`` knows none of its resources), and it
lacks StopTrainingJob, StopHyperParameterTuningJob and StopTransformJob (it has
StopProcessingJob). So this proxy forwards every request to the emulator unchanged, except:

- a held resource: its status in the emulator's own Describe*/List* answers is replaced by the
  one AWS shows while the work runs (``InProgress``, ``Creating``) or at its end (``Failed``,
  with a ``FailureReason``), until it is stopped or its hold is released; ``List*`` filters by
  that status;
- a Stop* of a held job: answered as AWS answers it (200, an empty JSON body) where the
  emulator lacks the operation (forwarded where it has it); the job reads ``Stopped`` from then on;
- a DeleteEndpoint of an endpoint held ``Creating``: refused with a ValidationException, as
  SageMaker refuses to delete an endpoint it is still creating; after the first refusal, the
  endpoint finishes creating after ``release_after`` more DescribeEndpoint calls;
- a refusal rule: a matching request gets the given AWS error (a service closed to the account);
- a recorded answer (``answer``): a call the emulator does not implement (Service Quotas'
  ListServiceQuotas, and SageMaker's quotas in ListAWSDefaultServiceQuotas) gets the answer
  given, in the API's own shape (``tests/aws/recorded.py``); ``answer_query`` does the same for a
  query-protocol call (IAM's SimulatePrincipalPolicy), its XML built from the request's form;
- Application Auto Scaling's ListTagsForResource (moto 5.2.5 keeps no tags of scalable targets and
  lacks the call): answered with the tags the target was registered with (``RegisterScalableTarget``
  requests through the gate), found by the ARN the emulator's DescribeScalableTargets gave it;
- an InvokeEndpoint: kept as sent (path, headers, the exact body bytes) in ``invocations``; a
  body that is not UTF-8 (any real image) reaches the emulator base64-encoded, since moto 5.2.5
  decodes every request body as UTF-8 and answers 500 otherwise (it answers queued results
  whatever the body).

- UpdateEndpoint (moto 5.2.5 lacks it) and the deployment states it starts (Updating, then InService on
  the new configuration, or RollingBack to the old one when an alarm of the update is in ALARM), and
  UpdateModelPackage's customer metadata kept: ``tests/aws/rollouts.py``.

Every request is logged (operation, JSON body) for the test to read. The client under test
is real (botocore, the SDK, the pipeline process), and so is the emulator behind the proxy.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.aws.rollouts import Rollouts

# kind -> (noun of the API, status key in the List* summaries); endpoints are deleted, not stopped
KINDS = {
    "hyper-parameter-tuning-job": ("HyperParameterTuningJob", "HyperParameterTuningJobSummaries"),
    "training-job": ("TrainingJob", "TrainingJobSummaries"),
    "transform-job": ("TransformJob", "TransformJobSummaries"),
    "processing-job": ("ProcessingJob", "ProcessingJobSummaries"),
    "endpoint": ("Endpoint", "Endpoints"),
}
_EMULATOR_HAS = {"StopProcessingJob"}
_INVOKE = re.compile(r"^/endpoints/[^/]+/invocations$")
_HOP_HEADERS = {"transfer-encoding", "connection", "content-length", "keep-alive"}


@dataclass
class Hold:
    kind: str
    pattern: re.Pattern[str]
    status: str
    release_after: int | None = None  # endpoints: describes after the first refused delete
    fields: dict[str, Any] = field(default_factory=dict)  # also shown, e.g. a FailureReason


@dataclass
class Refusal:
    operation: str
    when: Callable[[dict[str, Any]], bool]
    code: str
    message: str
    status: int = 400  # a 5xx: the service failing, not refusing


@dataclass
class Gate:
    upstream: str
    url: str = ""  # set by serve()
    holds: list[Hold] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    log: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # X-Amz-Target -> a recorded answer
    invocations: list[dict[str, Any]] = field(default_factory=list)  # InvokeEndpoint requests as sent
    query_answers: dict[str, Callable[[dict[str, list[str]]], str]] = field(default_factory=dict)  # query Action (IAM) -> XML
    stopped: set[str] = field(default_factory=set)
    target_tags: dict[str, dict[str, str]] = field(default_factory=dict)  # scalable target resource id -> its tags
    target_ids: dict[str, str] = field(default_factory=dict)  # scalable target ARN -> resource id
    _released: dict[str, int] = field(default_factory=dict)  # endpoint -> describes left before InService
    rollouts: Rollouts | None = None  # UpdateEndpoint and its deployment states (tests/aws/rollouts.py); set in __post_init__

    def __post_init__(self) -> None:
        self.rollouts = Rollouts(self.upstream)

    _lock: threading.Lock = field(default_factory=threading.Lock)

    def hold(self, kind: str, name_pattern: str, status: str, *, release_after: int | None = None, **fields: Any) -> None:
        self.holds.append(Hold(kind, re.compile(name_pattern), status, release_after, fields))

    def refuse(self, operation: str, when: Callable[[dict[str, Any]], bool], code: str, message: str, status: int = 400) -> None:
        self.refusals.append(Refusal(operation, when, code, message, status))

    def answer(self, target: str, body: dict[str, Any]) -> None:
        """Requests with this ``X-Amz-Target`` get ``body`` (a call the emulator lacks)."""
        self.answers[target] = body

    def answer_query(self, action: str, answer: Callable[[dict[str, list[str]]], str]) -> None:
        """Query-protocol requests (IAM) with this ``Action`` get ``answer(form)``, an XML body (a call the emulator lacks)."""
        self.query_answers[action] = answer

    def calls(self, operation: str) -> list[dict[str, Any]]:
        with self._lock:
            return [body for op, body in self.log if op == operation]

    # --- the status AWS would show ---------------------------------------------------------

    def _hold(self, kind: str, name: str) -> Hold | None:
        return next((h for h in self.holds if h.kind == kind and h.pattern.search(name)), None)

    def _held(self, kind: str, name: str) -> str | None:
        hold = self._hold(kind, name)
        if hold is None:
            return None
        if name in self.stopped:
            return "Stopped"
        left = self._released.get(name)
        if left is not None and left <= 0:
            return None  # released: the emulator's own answer
        return hold.status

    def _describe(self, kind: str, name: str, answer: dict[str, Any]) -> dict[str, Any]:
        status = self._held(kind, name)
        if kind == "endpoint" and name in self._released:
            self._released[name] -= 1
        if status is not None:
            answer[f"{KINDS[kind][0]}Status"] = status
            answer.update(self._hold(kind, name).fields)  # type: ignore[union-attr]
        return answer

    def _list(self, kind: str, wanted: str | None, answer: dict[str, Any]) -> dict[str, Any]:
        noun, key = KINDS[kind]
        items = []
        for item in answer.get(key, []):
            status = self._held(kind, item[f"{noun}Name"])
            if status is not None:
                item[f"{noun}Status"] = status
            if wanted is None or item.get(f"{noun}Status") == wanted:
                items.append(item)
        answer[key] = items
        return answer

    # --- requests ---------------------------------------------------------------------------

    def handle(
        self, operation: str, body: dict[str, Any], forward: Callable[[bytes], tuple[int, dict[str, str], bytes]]
    ) -> tuple[int, bytes]:
        with self._lock:
            self.log.append((operation, body))
            refusal = next((r for r in self.refusals if r.operation == operation and r.when(body)), None)
        if refusal is not None:
            return refusal.status, json.dumps({"__type": refusal.code, "message": refusal.message}).encode()
        for kind, (noun, _) in KINDS.items():
            name = body.get(f"{noun}Name", "")
            if operation == f"Stop{noun}" and self._held(kind, name) is not None:
                with self._lock:
                    self.stopped.add(name)
                if operation not in _EMULATOR_HAS:
                    return 200, b"{}"
            if operation == "DeleteEndpoint" and kind == "endpoint" and self._held(kind, name) == "Creating":
                hold = next(h for h in self.holds if h.kind == "endpoint" and h.pattern.search(name))
                with self._lock:
                    self._released.setdefault(name, hold.release_after or 0)
                message = f"Cannot delete endpoint {name} while it is in Creating status."
                return 400, json.dumps({"__type": "ValidationException", "message": message}).encode()
        rollouts = self.rollouts
        assert rollouts is not None
        if operation == "UpdateEndpoint":  # the emulator lacks it (tests/aws/rollouts.py)
            return rollouts.update(body)
        sent = rollouts.keep_metadata(body) if operation == "UpdateModelPackage" else body
        wanted = body.pop("StatusEquals", None) if operation.startswith("List") else None
        status, _, raw = forward(json.dumps(sent).encode() if wanted or sent is not body else b"")
        if status >= 300:
            return status, raw
        answer = json.loads(raw or b"{}")
        if operation == "DescribeEndpoint":
            answer = rollouts.describe(answer)
        elif operation == "ListEndpoints":
            answer = rollouts.listed(answer)
        elif operation == "DeleteEndpoint":
            rollouts.deleted(body.get("EndpointName", ""))
        with self._lock:
            for kind, (noun, _) in KINDS.items():
                if operation == f"Describe{noun}":
                    answer = self._describe(kind, body.get(f"{noun}Name", ""), answer)
                elif operation == f"List{noun}s":
                    answer = self._list(kind, wanted, answer)
        return status, json.dumps(answer).encode()

    def autoscaling(self, operation: str, body: dict[str, Any], forward: Callable[[], tuple[int, dict[str, str], bytes]]):
        """Application Auto Scaling: forwarded, but tags kept and ListTagsForResource answered (the emulator lacks it)."""
        with self._lock:
            self.log.append((operation, body))
            if operation == "RegisterScalableTarget":
                self.target_tags[body["ResourceId"]] = dict(body.get("Tags") or {})
            if operation == "ListTagsForResource":
                tags = self.target_tags.get(self.target_ids.get(body.get("ResourceARN", ""), ""), {})
                return 200, {"Content-Type": "application/x-amz-json-1.1"}, json.dumps({"Tags": tags}).encode()
        status, headers, raw = forward()
        if operation == "DescribeScalableTargets" and status < 300:
            with self._lock:
                for target in json.loads(raw).get("ScalableTargets", []):
                    self.target_ids[target["ScalableTargetARN"]] = target["ResourceId"]
        return status, headers, raw

    def serve(self) -> ThreadingHTTPServer:
        """Start answering on 127.0.0.1 (``url``); the caller shuts the server down."""
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, urlparse(self.upstream)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        return server


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while (size := int(handler.rfile.readline().strip(), 16)) > 0:
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
        handler.rfile.readline()
        return b"".join(chunks)
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def _handler(gate: Gate, upstream: Any) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: Any) -> None:  # quiet
            pass

        def _forward(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
            connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
            headers["Content-Length"] = str(len(body))
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            answer = (response.status, dict(response.getheaders()), response.read())
            connection.close()
            return answer

        def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                if key.lower() not in _HOP_HEADERS:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _any(self) -> None:
            body = _read_body(self)
            target = self.headers.get("X-Amz-Target", "")
            if _INVOKE.match(urlparse(self.path).path):
                with gate._lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    gate.invocations.append({"path": self.path, "headers": headers, "body": body})
                try:
                    body.decode("utf-8")
                except UnicodeDecodeError:
                    body = base64.b64encode(body)
                self._reply(*self._forward(body))
                return
            if target.startswith("AnyScaleFrontendService."):
                operation = target.split(".", 1)[1]
                self._reply(*gate.autoscaling(operation, json.loads(body or b"{}"), lambda: self._forward(body)))
                return
            if target in gate.answers:
                with gate._lock:
                    gate.log.append((target.split(".", 1)[1], json.loads(body or b"{}")))
                self._reply(200, {"Content-Type": "application/x-amz-json-1.1"}, json.dumps(gate.answers[target]).encode())
                return
            form = parse_qs(body.decode(errors="replace")) if not target and b"Action=" in body else {}
            if form.get("Action", [""])[0] in gate.query_answers:
                action = form["Action"][0]
                with gate._lock:
                    gate.log.append((action, {k: v for k, v in form.items()}))
                self._reply(200, {"Content-Type": "text/xml"}, gate.query_answers[action](form).encode())
                return
            if not target.startswith("SageMaker."):
                self._reply(*self._forward(body))
                return
            operation = target.split(".", 1)[1]
            status, answer = gate.handle(operation, json.loads(body or b"{}"), lambda changed: self._forward(changed or body))
            self._reply(status, {"Content-Type": "application/x-amz-json-1.1"}, answer)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

    return Handler
