"""The whole AWS pipeline against the local emulator, on real artifacts of a real `train` run.

The emulator completes every job at once with placeholder results, names the best trial
``FakeTrainingJobName`` and has no ListTrainingJobsForHyperParameterTuningJob. So the test seeds
what it cannot produce, from the session's real training run: the best job record and its
model, the final job's model.tar.gz and output.tar.gz, the endpoint's answers (computed by the
package's own inference on the same image), and the batch transform outputs. Everything the
pipeline sends is then read back from the emulator's recorder and describe calls.
"""

from __future__ import annotations

import base64
import json

import boto3
import pytest

from deploy import pipeline
from deploy.config import load_config
from image_classifier.metrics import OBJECTIVE_METRIC, metric_definitions
from tests.aws import seeding
from tests.aws.conftest import BUCKET, REGION, ROLE, pinned_image
from tests.aws.seeding import TUNED, Answers


@pytest.fixture(scope="module")
def trained(digits_job):
    base, result = digits_job
    return {"model_dir": base / "model", "output_dir": base / "output" / "data", "log": result.stdout}


@pytest.fixture
def cfg(aws, tmp_path):
    return load_config(
        overrides={
            "region": REGION,
            "role_arn": ROLE,
            "bucket": BUCKET,
            "model": "resnet18",
            "runs_dir": str(tmp_path / "runs"),
            "max_jobs": 4,
            "max_parallel_jobs": 2,
            "subnets": ["subnet-0123456789abcdef0"],
            "security_group_ids": ["sg-0123456789abcdef0"],
            "hyperparameters": {"image_size": "32", "augment": "light"},
            "search": {"models": ["resnet18", "resnet34"]},
            "tags": {"team": "vision"},
            "stream_logs": False,
        },
        environ={},
    )


@pytest.fixture
def pretrained_dir(tmp_path):
    """The files the weights step would fetch; here a stand-in of the right name per backbone."""
    from safetensors.torch import save_file
    from torch import zeros

    folder = tmp_path / "pretrained"
    folder.mkdir()
    for name in ("resnet18", "resnet34"):
        save_file({"stand_in": zeros(1)}, str(folder / f"{name}.safetensors"))
    return folder


def _tags(sm, arn: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn)["Tags"]}


def test_end_to_end(aws, cfg, trained, digits_data, pretrained_dir, tmp_path, capsys):
    sm = boto3.client("sagemaker", region_name=REGION)
    answers = Answers(trained["model_dir"])
    sample = sorted((digits_data / "test" / "digit_3").glob("*.png"))[0]
    # endpoints kept between the run() calls, so that each step's result can be read; cleanup deletes them at the end
    ctx = pipeline.context(
        cfg, new_run=True, yes=True, keep_endpoint=True, data=str(digits_data), pretrained_dir=pretrained_dir, sample=sample
    )
    run_id = ctx.state.run_id

    # data + weights: pre-flight, upload, channels recorded
    pipeline.run(["data", "weights"], ctx)
    assert set(ctx.state.channels) == {"train", "validation", "test", "pretrained"}
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="image-classifier/data/test/")["Contents"]]
    assert len(keys) >= 100

    # 1. tuning
    pipeline.run(["tune"], ctx)
    tuning = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=ctx.state.tuning_job)
    config = tuning["HyperParameterTuningJobConfig"]
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": OBJECTIVE_METRIC}
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 4, "MaxParallelTrainingJobs": 2}
    assert config["TrainingJobEarlyStoppingType"] == "Auto"
    ranges = config["ParameterRanges"]
    continuous = {r["Name"]: r for r in ranges["ContinuousParameterRanges"]}
    # centred on the trainer's rule: a factor on the rate it gives each trial's batch size and freeze
    assert continuous["lr_scale"] == {"Name": "lr_scale", "MinValue": "0.3", "MaxValue": "3.0", "ScalingType": "Logarithmic"}
    assert "lr" not in continuous
    assert continuous["weight_decay"]["ScalingType"] == "Logarithmic"
    categorical = {r["Name"]: r["Values"] for r in ranges["CategoricalParameterRanges"]}
    assert categorical == {"batch_size": ["32", "64", "128"], "freeze": ["head", "last:2", "none"], "model": ["resnet18", "resnet34"]}
    definition = tuning["TrainingJobDefinition"]
    assert definition["AlgorithmSpecification"]["MetricDefinitions"] == metric_definitions()
    assert definition["AlgorithmSpecification"]["TrainingImage"] == pinned_image()  # the newest push, by digest
    # the backbone is searched, so it is a tuned hyperparameter, not a static one; no epochs: the trainer's rule decides
    assert definition["StaticHyperParameters"] == {"image_size": "32", "augment": "light"}
    assert definition["EnableManagedSpotTraining"] is True
    assert definition["StoppingCondition"] == {"MaxRuntimeInSeconds": 21600, "MaxWaitTimeInSeconds": 43200}
    assert definition["CheckpointConfig"]["S3Uri"] == f"s3://{BUCKET}/image-classifier/checkpoints/{run_id}/tune"
    assert definition["EnableNetworkIsolation"] is True
    assert definition["VpcConfig"] == {"Subnets": ["subnet-0123456789abcdef0"], "SecurityGroupIds": ["sg-0123456789abcdef0"]}
    assert {c["ChannelName"] for c in definition["InputDataConfig"]} == {"train", "validation", "pretrained"}
    assert _tags(sm, tuning["HyperParameterTuningJobArn"]) == {"project": "image-classifier", "run-id": run_id, "team": "vision"}

    # 2. best job: seed what the emulator cannot produce (the real best trial and three trials)
    best_name, seeded_hps = seeding.tuning_results(ctx.state.tuning_job, definition["StaticHyperParameters"], trained["model_dir"])
    pipeline.run(["best"], ctx)
    assert ctx.state.best_hyperparameters == {k: v for k, v in seeded_hps.items() if not k.startswith("_")}
    assert ctx.state.best_model_data == f"s3://{BUCKET}/seed/{best_name}/output/model.tar.gz"
    trials = json.loads((ctx.run_dir / "trials.json").read_text())
    assert sorted(t["lr_scale"] for t in trials) == sorted(seeding.TRIAL_LR_SCALES)

    # 3. the final, profiled job; its real model and reports are seeded where the job writes them
    final = ctx.next_name("final")
    job_root = f"image-classifier/runs/{run_id}/final/{final}"
    seeding.final_job_outputs(job_root, trained["model_dir"], trained["output_dir"])
    pipeline.run(["train"], ctx)
    sent = aws.sent("CreateTrainingJob")[-1]
    assert sent["TrainingJobName"] == final
    assert sent["HyperParameters"] == {"model": "resnet18", "image_size": "32", "augment": "light", **TUNED}
    assert [r["RuleConfigurationName"] for r in sent["DebugRuleConfigurations"]] == [
        "VanishingGradient",
        "Overfit",
        "Overtraining",
        "PoorWeightInitialization",
        "LossNotDecreasing",
    ]
    assert sent["DebugHookConfig"]["S3OutputPath"] == f"s3://{BUCKET}/image-classifier/runs/{run_id}/final/debug"
    collections = [c["CollectionName"] for c in sent["DebugHookConfig"]["CollectionConfigurations"]]
    assert sorted(collections) == ["gradients", "losses", "relu_input"]  # what the rules read, each once
    assert sent["ProfilerConfig"]["S3OutputPath"] == f"s3://{BUCKET}/image-classifier/runs/{run_id}/final/profiler"
    assert [r["RuleConfigurationName"] for r in sent["ProfilerRuleConfigurations"]] == ["ProfilerReport"]
    assert sent["AlgorithmSpecification"]["MetricDefinitions"] == metric_definitions()
    assert sent["EnableManagedSpotTraining"] is True and sent["EnableNetworkIsolation"] is True
    assert sent["CheckpointConfig"]["S3Uri"] == f"s3://{BUCKET}/image-classifier/checkpoints/{run_id}/final"
    assert {c["ChannelName"] for c in sent["InputDataConfig"]} == {"train", "validation", "test", "pretrained"}
    reports = ctx.run_dir / "reports"
    assert json.loads((reports / "output" / "training_report.json").read_text())["status"] in ("completed", "early_stopped")
    assert (reports / "rule-output" / "ProfilerReport-1" / "profiler-output" / "profiler-report.html").is_file()
    out = capsys.readouterr().out
    assert "event=training_report status=" in out and "test_acc=" in out

    # 4. endpoint + query: the canned answer is the package's real answer for the same image
    expected = answers.json(sample, top_k=5)
    aws.queue_endpoint_results([expected])
    pipeline.run(["deploy", "query"], ctx)
    endpoint = sm.describe_endpoint(EndpointName=ctx.state.endpoint)
    assert endpoint["EndpointStatus"] == "InService"
    model = sm.describe_model(ModelName=ctx.state.model_name)
    created = aws.sent("CreateModel")[-1]  # the emulator does not keep these two fields
    assert created["EnableNetworkIsolation"] is True
    assert created["VpcConfig"] == {"Subnets": ["subnet-0123456789abcdef0"], "SecurityGroupIds": ["sg-0123456789abcdef0"]}
    assert model["PrimaryContainer"]["Image"] == ctx.state.image_uri
    assert model["PrimaryContainer"]["ModelDataUrl"] == f"s3://{BUCKET}/{job_root}/output/model.tar.gz"
    for arn in (endpoint["EndpointArn"], model["ModelArn"]):
        assert _tags(sm, arn)["run-id"] == run_id
    out = capsys.readouterr().out
    top = json.loads(expected)["predictions"][0]["top_k"]
    assert f"label={top[0]['label']}" in out
    assert all(f"{e['probability']:.3f}  {e['label']}" in out for e in top)
    invoke = [r for r in aws.requests() if r["path"].endswith("/invocations")][-1]
    assert invoke["headers"]["x-amzn-sagemaker-custom-attributes"] == "top_k=5"
    assert base64.b64decode(json.loads(invoke["body"])["instances"][0]["b64"]) == sample.read_bytes()

    # 5. multi-model endpoint: both artifacts copied under the prefix, each invoked by TargetModel
    aws.queue_endpoint_results([expected, expected])
    pipeline.run(["mme"], ctx)
    mme_keys = {
        o["Key"].rsplit("/", 1)[-1]
        for o in boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"image-classifier/runs/{run_id}/mme/")["Contents"]
    }
    assert mme_keys == {"final.tar.gz", "best-trial.tar.gz"}
    mme_model = sm.describe_model(ModelName=ctx.state.multi_model_endpoint)
    assert mme_model["PrimaryContainer"]["Mode"] == "MultiModel"
    assert set(ctx.state.results["mme"]) == {"final.tar.gz", "best-trial.tar.gz"}
    targets = [r["headers"].get("x-amzn-sagemaker-target-model") for r in aws.requests() if r["path"].endswith("/invocations")]
    assert targets[-2:] == ["final.tar.gz", "best-trial.tar.gz"]

    # 6. batch transform: outputs seeded with the package's real answers, accuracy computed from them
    prefix = f"image-classifier/runs/{run_id}/transform/"
    correct = 0
    test_keys = [k for k in keys if not k.endswith("/")]
    for key in test_keys:
        relative = key.removeprefix("image-classifier/data/test/")
        local = digits_data / "test" / relative
        line = answers.json(local, top_k=1, lines=True)
        correct += json.loads(line)["label"] == relative.split("/")[0]
        seeding.put(prefix + relative + ".out", line.encode())
    pipeline.run(["transform"], ctx)
    transform = sm.describe_transform_job(TransformJobName=ctx.state.transform_job)
    assert transform["TransformInput"]["ContentType"] == "application/x-image"
    assert transform["TransformOutput"]["Accept"] == "application/jsonlines"
    summary = ctx.state.results["transform"]
    assert summary["images"] == len(test_keys) and summary["missing_outputs"] == 0
    assert summary["accuracy"] == pytest.approx(correct / len(test_keys))
    assert summary["accuracy"] > 0.5  # a real trained model, not chance (0.1)

    # 7. Clarify: the analysis config asks for our probability vector
    pipeline.run(["clarify"], ctx)
    processing = sm.describe_processing_job(ProcessingJobName=ctx.state.clarify_job)
    assert _tags(sm, processing["ProcessingJobArn"])["run-id"] == run_id
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in aws.sent("CreateProcessingJob")[-1]["ProcessingInputs"]}
    bucket, _, key = inputs["analysis_config"].removeprefix("s3://").partition("/")
    analysis = json.loads(
        boto3.client("s3")
        .get_object(Bucket=bucket, Key=key.rstrip("/") + ("" if key.endswith(".json") else "/analysis_config.json"))["Body"]
        .read()
    )
    assert inputs["dataset"] == f"s3://{BUCKET}/image-classifier/runs/{run_id}/clarify-input/"
    assert analysis["predictor"]["probability"] == "predictions[0].probabilities"
    assert analysis["predictor"]["custom_attributes"] == "probabilities=true"
    assert analysis["methods"]["shap"]["image_config"]["model_type"] == "IMAGE_CLASSIFICATION"

    # every job and model of the run runs the one image it was given, by digest (a tag may move)
    images = [r["TrainingJobDefinition"]["AlgorithmSpecification"]["TrainingImage"] for r in aws.sent("CreateHyperParameterTuningJob")]
    images += [r["AlgorithmSpecification"]["TrainingImage"] for r in aws.sent("CreateTrainingJob") if r["TrainingJobName"] == final]
    images += [r["PrimaryContainer"]["Image"] for r in aws.sent("CreateModel") if r["ModelName"].startswith("ic-")]
    assert len(images) >= 4 and set(images) == {pinned_image()} == {ctx.state.image_uri}

    # 8. cleanup: ours gone, a stranger's endpoint untouched
    _stranger(sm)
    pipeline.run(["cleanup"], ctx)
    assert [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]] == ["someone-elses"]
    assert [m["ModelName"] for m in sm.list_models()["Models"]] == ["someone-elses"]
    assert [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]] == ["someone-elses"]


def _stranger(sm) -> None:
    sm.create_model(ModelName="someone-elses", PrimaryContainer={"Image": "x"}, ExecutionRoleArn=ROLE)
    sm.create_endpoint_config(
        EndpointConfigName="someone-elses",
        ProductionVariants=[{"VariantName": "v", "ModelName": "someone-elses", "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}],
    )
    sm.create_endpoint(EndpointName="someone-elses", EndpointConfigName="someone-elses")


def test_metric_regexes_read_a_real_training_log(aws, cfg, trained, tmp_path):
    """The regexes the tuning job was sent extract the trainer's own numbers from its log."""
    import re

    ctx = pipeline.context(cfg, run_id="regex")
    ctx.state.channels = {"train": f"s3://{BUCKET}/t", "validation": f"s3://{BUCKET}/v"}
    pipeline.run(["tune"], ctx)
    sent = aws.sent("CreateHyperParameterTuningJob")[0]
    definitions = sent["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"]
    found = {d["Name"]: [float(m) for m in re.findall(d["Regex"], trained["log"])] for d in definitions}
    metrics = json.loads((trained["output_dir"] / "metrics.json").read_text())
    epochs = metrics["history"]
    assert len(epochs) == 3
    assert found["valid_acc"] == pytest.approx([e["valid_acc"] for e in epochs], abs=1e-5)  # never read inside best_valid_acc
    # the objective: the best epoch so far on every epoch line, then the final line; its last value is the kept model's
    running = [max(e["valid_acc"] for e in epochs[: i + 1]) for i in range(len(epochs))]
    assert sent["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["MetricName"] == OBJECTIVE_METRIC == "best_valid_acc"
    assert found[OBJECTIVE_METRIC] == pytest.approx([*running, metrics["final"]["best_valid_acc"]], abs=1e-5)
    assert found[OBJECTIVE_METRIC][-1] == pytest.approx(max(e["valid_acc"] for e in epochs), abs=1e-5)
    assert found["train_loss"][-1] == pytest.approx(epochs[-1]["train_loss"], rel=1e-4)
    assert found["test_acc"] == pytest.approx([metrics["final"]["test_acc"]], abs=1e-5)
    assert all(found[name] for name in ("train_acc", "valid_loss", "lr", "images_per_sec", "test_top5_acc")), {
        k: len(v) for k, v in found.items()
    }
