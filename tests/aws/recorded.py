"""Answers to the calls the emulator lacks, in the shape the API returns them: SageMaker's quotas.

moto 5.2.5 implements no ListServiceQuotas, and its ListAWSDefaultServiceQuotas knows VPC only.
The gate (``tests/aws/gate.py``) answers both with these, built to the Service Quotas API
reference's response syntax. Quota names are SageMaker's own ("<instance type> for <use> usage",
as ResourceLimitExceeded messages quote them). The ml.g4dn.xlarge codes are real (AWS's own
samples request them); the other codes are stand-ins of the same form: the pre-flight matches
quotas by name and only prints the code in the fix. Values: a new account, GPU quotas at 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ACCOUNT = "123456789012"
LIST_APPLIED = "ServiceQuotasV20190624.ListServiceQuotas"
LIST_DEFAULTS = "ServiceQuotasV20190624.ListAWSDefaultServiceQuotas"
CODES = {
    "ml.g4dn.xlarge for training job usage": "L-3F53BF0F",
    "ml.g4dn.xlarge for processing job usage": "L-2F1EB012",
    "ml.g4dn.xlarge for transform job usage": "L-4C5C5CA8",
    "ml.g5.xlarge for training job usage": "L-A1B2C3D4",
    "ml.g5.xlarge for spot training job usage": "L-A1B2C3D5",
    "ml.g5.xlarge for endpoint usage": "L-A1B2C3D6",
    "ml.m5.xlarge for endpoint usage": "L-A1B2C3D7",
    "ml.m5.xlarge for transform job usage": "L-A1B2C3D8",
    "ml.m5.xlarge for processing job usage": "L-A1B2C3D9",
}
NEW_ACCOUNT = {name: (0.0 if name.startswith(("ml.g4dn", "ml.g5")) else 4.0) for name in CODES}


def quota(name: str, value: float, *, applied: bool, region: str = "us-east-1") -> dict[str, Any]:
    code = CODES[name]
    return {
        "ServiceCode": "sagemaker",
        "ServiceName": "Amazon SageMaker",
        "QuotaArn": f"arn:aws:servicequotas:{region}:{ACCOUNT if applied else ''}:sagemaker/{code}",
        "QuotaCode": code,
        "QuotaName": name,
        "Value": value,
        "Unit": "None",
        "Adjustable": True,
        "GlobalQuota": False,
    }


def answers(applied: dict[str, float]) -> dict[str, dict[str, Any]]:
    """X-Amz-Target -> answer: the quotas raised in this account (``applied``), and the defaults of all."""
    return {
        LIST_APPLIED: {"Quotas": [quota(name, value, applied=True) for name, value in applied.items()]},
        LIST_DEFAULTS: {"Quotas": [quota(name, value, applied=False) for name, value in NEW_ACCOUNT.items()]},
    }


def simulated(denied: set[str]) -> Callable[[dict[str, list[str]]], str]:
    """IAM's SimulatePrincipalPolicy (moto lacks it): each asked action allowed, but those in ``denied``."""

    def answer(form: dict[str, list[str]]) -> str:
        numbered = {int(k.rsplit(".", 1)[-1]): v[0] for k, v in form.items() if k.startswith("ActionNames.member.")}
        asked = [numbered[i] for i in sorted(numbered)]
        members = "".join(
            f"<member><EvalActionName>{a}</EvalActionName><EvalResourceName>*</EvalResourceName>"
            f"<EvalDecision>{'implicitDeny' if a in denied else 'allowed'}</EvalDecision></member>"
            for a in asked
        )
        return (
            '<SimulatePrincipalPolicyResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><SimulatePrincipalPolicyResult>'
            f"<IsTruncated>false</IsTruncated><EvaluationResults>{members}</EvaluationResults></SimulatePrincipalPolicyResult>"
            "<ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></SimulatePrincipalPolicyResponse>"
        )

    return answer
