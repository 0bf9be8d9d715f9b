"""SageMaker local mode: the SDK v2 trains the image, deploys it locally and predicts.

The same calls as on AWS, run by ``LocalSession`` with Docker on this machine: ``file://`` data,
``instance_type="local"`` (or ``"local_gpu"``), ``instance_count`` > 1 for multi-host DDP over
a Docker network. Local mode publishes the endpoint on port 8080 of every interface (its own
behaviour). ``local_code`` is on: the SDK mounts ``source_dir`` instead of uploading it to S3.

Our trainer and handler: ``train`` and ``deploy_and_predict``. A user's own scripts in the same
image (script mode, docs/script-mode.md): ``pytorch_estimator`` and ``pytorch_model``.

    python -m local.local_mode          # image-classifier:local on ./local/opt_ml (make local-data), 1 instance

Defaults train out of the box on what ``make local-data`` wrote: its channels and its
``hyperparameters.json`` (EfficientNet-Lite0 with its ImageNet weights in the ``pretrained``
channel). A ``pretrained`` channel that holds no weights for the model asked for is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from deploy.quiet import quiet_sdk
from image_classifier.metrics import metric_definitions

DUMMY_ROLE = "arn:aws:iam::111111111111:role/local-mode"  # local mode never assumes it
# The SDK wants a PyTorch version even with image_uri: the torch in our image (it only decides that
# PyTorchModel repacks the code into model.tar.gz, which every version >= 1.2 does)
FRAMEWORK_VERSION = "2.14"
# Without a code location the SDK asks STS for the account's default bucket before it sees local_code
# (nothing is uploaded there in local mode)
LOCAL_CODE_LOCATION = "s3://local-mode/code"


def _quiet_sdk(verbose: bool = False) -> None:
    """No telemetry, no v2 banner, no network, only our lines (``deploy.quiet``; ``--verbose`` shows the SDK's)."""
    quiet_sdk(verbose=verbose)
    config = Path(tempfile.gettempdir()) / "sagemaker-telemetry-opt-out.yaml"
    config.write_text('SchemaVersion: "1.0"\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n')
    os.environ.setdefault("SAGEMAKER_USER_CONFIG_OVERRIDE", str(config))
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")


def local_session(output: Path):
    _quiet_sdk()
    import boto3
    from sagemaker.local import LocalSession

    session = LocalSession(boto_session=boto3.Session(region_name=os.environ["AWS_DEFAULT_REGION"]))
    session.config = {"local": {"local_code": True, "container_root": str(output / "containers")}}
    (output / "containers").mkdir(parents=True, exist_ok=True)
    return session


def train(image: str, data: Path, output: Path, hyperparameters: dict[str, str], instance_type: str = "local", instance_count: int = 1):
    from sagemaker.estimator import Estimator

    session = local_session(output)
    estimator = Estimator(
        image_uri=image,
        role=DUMMY_ROLE,
        instance_count=instance_count,
        instance_type=instance_type,
        output_path=f"file://{output.resolve()}",
        hyperparameters=hyperparameters,
        metric_definitions=metric_definitions(),
        sagemaker_session=session,
    )
    estimator.fit(channels_for(data, hyperparameters.get("model", "resnet50")), wait=True, logs=True)
    return estimator


def pytorch_estimator(
    image: str,
    source_dir: Path,
    entry_point: str,
    hyperparameters: dict[str, str],
    instance_type: str = "local",
    instance_count: int = 1,
    torchrun: bool = False,
    output: Path | None = None,
):
    """The SDK's script mode on our image: ``PyTorch(entry_point=..., source_dir=..., image_uri=...)``."""
    from sagemaker.pytorch import PyTorch

    output = output or Path(tempfile.mkdtemp(prefix="local-mode-"))
    return PyTorch(
        entry_point=entry_point,
        source_dir=str(source_dir),
        image_uri=image,
        framework_version=FRAMEWORK_VERSION,
        py_version="py311",
        role=DUMMY_ROLE,
        instance_count=instance_count,
        instance_type=instance_type,
        output_path=f"file://{output.resolve()}",
        hyperparameters=hyperparameters,
        distribution={"torch_distributed": {"enabled": True}} if torchrun else None,
        sagemaker_session=local_session(output),
    )


def pytorch_model(image: str, model_data: str, source_dir: Path, entry_point: str, output: Path):
    """A model served by the user's own inference code: ``PyTorchModel(entry_point=..., image_uri=...)``.

    The SDK packs ``source_dir`` into model.tar.gz as ``code/`` (with ``local_code``, the local
    ``model_data`` file itself is repacked) and sets ``SAGEMAKER_PROGRAM``."""
    from sagemaker.pytorch import PyTorchModel

    return PyTorchModel(
        model_data=model_data,
        image_uri=image,
        entry_point=entry_point,
        source_dir=str(source_dir),
        framework_version=FRAMEWORK_VERSION,
        role=DUMMY_ROLE,
        code_location=LOCAL_CODE_LOCATION,
        sagemaker_session=local_session(output),
    )


def channels_for(data: Path, model: str) -> dict[str, str]:
    """Every channel folder of ``data``; ``pretrained`` only when it holds the weights of ``model``."""
    from image_classifier.modeling.weights_io import safe_name

    channels = {p.name: f"file://{p.resolve()}" for p in sorted(data.iterdir()) if p.is_dir()}
    weights = data / "pretrained"
    if "pretrained" in channels and not any(p.stem == safe_name(model) for p in weights.iterdir()):
        print(f"local_mode: pretrained channel left out: {weights} holds no weights for {model}", flush=True)
        del channels["pretrained"]
    return channels


def default_hyperparameters(data: Path) -> dict[str, str]:
    """The hyperparameters ``make local-data`` wrote beside ``data``, else one epoch of the defaults."""
    written = data.parent / "config" / "hyperparameters.json"
    return json.loads(written.read_text()) if written.is_file() else {"epochs": "1"}


def deploy_and_predict(estimator, instance_type: str, image_bytes: bytes, content_type: str = "image/png") -> dict:
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.serializers import IdentitySerializer

    predictor = estimator.deploy(1, instance_type, serializer=IdentitySerializer(content_type), deserializer=JSONDeserializer())
    try:
        return predictor.predict(image_bytes)
    finally:
        predictor.delete_endpoint()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="image-classifier:local")
    parser.add_argument("--data", type=Path, default=Path("local/opt_ml/input/data"), help="folder of channels (train/ validation/ ...)")
    parser.add_argument("--output", type=Path, default=Path("local/local_mode_output"))
    parser.add_argument("--instance-type", default="local", choices=("local", "local_gpu"))
    parser.add_argument("--instance-count", type=int, default=1)
    parser.add_argument("--hyperparameters", default=None, help="JSON object (default: <data>/../config/hyperparameters.json)")
    parser.add_argument("--sample", type=Path, help="image to predict (default: the first test image)")
    parser.add_argument("--verbose", action="store_true", help="also the SageMaker SDK's own messages")
    args = parser.parse_args()
    _quiet_sdk(args.verbose)
    hyperparameters = json.loads(args.hyperparameters) if args.hyperparameters else default_hyperparameters(args.data)
    estimator = train(args.image, args.data, args.output, hyperparameters, args.instance_type, args.instance_count)
    held_out = args.data / "test" if (args.data / "test").is_dir() else args.data / "validation"
    sample = args.sample or sorted(p for p in held_out.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[0]
    content_type = "image/png" if sample.suffix.lower() == ".png" else "image/jpeg"
    answer = deploy_and_predict(estimator, args.instance_type, sample.read_bytes(), content_type)
    print(json.dumps(answer["predictions"][0]["top_k"], indent=2))


if __name__ == "__main__":
    main()
