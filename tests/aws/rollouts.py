"""The deployments moto 5.2.5 lacks, played by the gate (tests/aws/gate.py): UpdateEndpoint and its states.

moto answers UpdateEndpoint with NotImplemented and keeps an endpoint on the configuration it was created
with. Here an UpdateEndpoint of an endpoint in service is accepted as SageMaker accepts it (a missing
endpoint or configuration, or an endpoint not in service, is refused with SageMaker's ValidationException)
and the endpoint then reads, in the emulator's own DescribeEndpoint/ListEndpoints answers:

- ``Updating`` for ``describes`` DescribeEndpoint calls, with the new configuration under
  ``PendingDeploymentSummary`` and the old one still serving;
- then the bake's verdict: alarms the test named (``fire``) are set to ALARM in the emulator's CloudWatch;
  if any of the update's AutoRollbackConfiguration alarms is in ALARM, ``RollingBack`` once and then
  ``InService`` on the old configuration; otherwise ``InService`` on the new one.

UpdateModelPackage: moto clears CustomerMetadataProperties an update does not name (SageMaker leaves them);
the gate sends the package's current ones along.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.exceptions import ClientError

REGION = "us-east-1"


@dataclass
class Deployment:
    old: str
    new: str
    alarms: list[str]
    left: int
    status: str = "Updating"
    started: float = field(default_factory=time.time)


@dataclass
class Rollouts:
    upstream: str
    describes: int = 2  # DescribeEndpoint calls that read Updating before the bake's verdict
    fire: list[re.Pattern[str]] = field(default_factory=list)
    serving: dict[str, str] = field(default_factory=dict)  # endpoint -> the configuration an update put in service
    active: dict[str, Deployment] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def alarm_fires(self, pattern: str) -> None:
        """During the bake, alarms whose name matches go to ALARM (a bad new version)."""
        self.fire.append(re.compile(pattern))

    def _client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.upstream, region_name=REGION)

    @staticmethod
    def _refused(message: str) -> tuple[int, bytes]:
        return 400, json.dumps({"__type": "ValidationException", "message": message}).encode()

    def update(self, body: dict[str, Any]) -> tuple[int, bytes]:
        name, new = body["EndpointName"], body["EndpointConfigName"]
        sm = self._client("sagemaker")
        try:
            current = sm.describe_endpoint(EndpointName=name)
        except ClientError:
            return self._refused(f'Could not find endpoint "{name}".')
        with self._lock:
            if name in self.active:
                return self._refused(f'Cannot update in-progress endpoint "{name}".')
            old = self.serving.get(name, current["EndpointConfigName"])
        try:
            sm.describe_endpoint_config(EndpointConfigName=new)
        except ClientError:
            return self._refused(f'Could not find endpoint configuration "{new}".')
        alarms = [a["AlarmName"] for a in body.get("DeploymentConfig", {}).get("AutoRollbackConfiguration", {}).get("Alarms", [])]
        with self._lock:
            self.active[name] = Deployment(old, new, alarms, self.describes)
        return 200, json.dumps({"EndpointArn": current["EndpointArn"]}).encode()

    def _verdict(self, deployment: Deployment) -> str:
        cloudwatch = self._client("cloudwatch")
        for alarm in deployment.alarms:
            if any(p.search(alarm) for p in self.fire):
                cloudwatch.set_alarm_state(AlarmName=alarm, StateValue="ALARM", StateReason="the test's bad version")
        found = cloudwatch.describe_alarms(AlarmNames=deployment.alarms).get("MetricAlarms", []) if deployment.alarms else []
        return "RollingBack" if any(a["StateValue"] == "ALARM" for a in found) else "InService"

    def describe(self, answer: dict[str, Any]) -> dict[str, Any]:
        name = answer.get("EndpointName", "")
        with self._lock:
            if name in self.serving:
                answer["EndpointConfigName"] = self.serving[name]
            deployment = self.active.get(name)
            if deployment is None:
                return answer
            if deployment.status == "Updating" and deployment.left > 0:
                deployment.left -= 1
            elif deployment.status == "Updating":
                deployment.status = self._verdict(deployment)
                if deployment.status == "InService":
                    self.serving[name] = deployment.new
                    del self.active[name]
                    answer.update(EndpointStatus="InService", EndpointConfigName=deployment.new)
                    return answer
            elif deployment.status == "RollingBack":
                self.serving[name] = deployment.old
                del self.active[name]
                answer.update(EndpointStatus="InService", EndpointConfigName=deployment.old)
                return answer
            answer["EndpointStatus"] = deployment.status
            answer["EndpointConfigName"] = deployment.old
            answer["PendingDeploymentSummary"] = {"EndpointConfigName": deployment.new, "StartTime": deployment.started}
            return answer

    def listed(self, answer: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            for item in answer.get("Endpoints", []):
                if item["EndpointName"] in self.active:
                    item["EndpointStatus"] = self.active[item["EndpointName"]].status
        return answer

    def deleted(self, name: str) -> None:
        with self._lock:
            self.serving.pop(name, None)
            self.active.pop(name, None)

    def keep_metadata(self, body: dict[str, Any]) -> dict[str, Any]:
        """UpdateModelPackage without CustomerMetadataProperties: the package's current ones, as SageMaker keeps them."""
        if "CustomerMetadataProperties" in body:
            return body
        try:
            described = self._client("sagemaker").describe_model_package(ModelPackageName=body["ModelPackageArn"])
        except ClientError:
            return body
        kept = described.get("CustomerMetadataProperties")
        return {**body, "CustomerMetadataProperties": kept} if kept else body
