"""The serving fast paths (frozen graph, bf16) answer like the plain fp32 eager model, and the choice is logged and can be forced."""

from __future__ import annotations

import logging
import types

import pytest
import torch
from PIL import Image
from torch import nn

from image_classifier import params
from image_classifier.errors import UserError
from image_classifier.model_card import write_artifact
from image_classifier.modeling.factory import build_architecture, data_config_for
from image_classifier.serving import fast_path_rule, fast_paths
from image_classifier.serving.fast_path_rule import Decision, Facts
from image_classifier.serving.model import LoadedModel


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build_architecture("test_resnet", 10).eval().to(memory_format=torch.channels_last)


def _batch(n: int, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(n)).contiguous(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory):
    torch.manual_seed(0)
    model = build_architecture("test_resnet", 3)
    folder = tmp_path_factory.mktemp("artifact")
    config = data_config_for("test_resnet", model, 32)
    write_artifact(
        folder,
        model.state_dict(),
        architecture="test_resnet",
        num_classes=3,
        classes=["a", "b", "c"],
        preprocessing=config.as_dict(),
        metrics={},
        hyperparameters={},
        pretrained=None,
        job_name="unit",
    )
    return folder


def _facts(device: str = "cpu", bf16_units: bool = False, torchscript: bool = True) -> Facts:
    return Facts(device, bf16_units, "test", torchscript, torch.__version__)


def _big_model() -> nn.Module:
    """Above ``MIN_GFLOP_FOR_BF16`` at 64 px (1.26 GFLOP), small enough to build in a test."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 256, 3, padding=1), nn.ReLU(), nn.Conv2d(256, 64, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    ).eval()


@pytest.mark.parametrize(
    ("facts", "gflop", "expected"),
    [
        (_facts(bf16_units=True), 8.2, Decision("bf16", "frozen", "bf16_units")),  # ResNet-50 on avx512_bf16/AMX
        (_facts(bf16_units=True), 0.07, Decision("fp32", "frozen", "small_model")),
        (_facts(bf16_units=False), 8.2, Decision("fp32", "frozen", "no_bf16_units")),  # bf16 would be emulated
        (_facts("cuda", bf16_units=True), 8.2, Decision("fp32", "frozen", "gpu_tf32")),  # bf16 ≈ fp32 under TF32 (H200)
        (_facts("cuda", bf16_units=False), 8.2, Decision("fp32", "frozen", "no_bf16_units")),  # before Ampere
        (_facts(bf16_units=True, torchscript=False), 8.2, Decision("bf16", "eager", "bf16_units")),  # export ≈ eager
    ],
)
def test_the_rule(facts, gflop, expected):
    assert fast_path_rule.decide(facts, gflop) == expected


def test_cpu_flags_come_from_proc_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert "avx512_bf16" in fast_path_rule.cpu_flags(cpuinfo) and "amx_bf16" not in fast_path_rule.cpu_flags(cpuinfo)
    assert fast_path_rule.cpu_flags(tmp_path / "absent") == frozenset()
    assert fast_path_rule.read_facts("cpu").device == "cpu"


def test_the_flops_counted_on_the_meta_device_are_the_real_ones():
    from torch.utils.flop_counter import FlopCounterMode

    model, example = _big_model(), _batch(1, 64)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(example)
    assert fast_paths.gflop_per_image(model, _batch(3, 64)) == pytest.approx(counter.get_total_flops() / 1e9)
    assert next(model.parameters()).device.type == "cpu"  # the model is untouched


def test_the_rule_decides_without_timing_anything_and_says_so(caplog, monkeypatch):
    caplog.set_level(logging.INFO)

    def no_timing(*_args, **_kwargs):
        raise AssertionError("the rule timed a candidate")

    monkeypatch.setattr(fast_paths, "_call_ms", no_timing)
    monkeypatch.setattr(fast_paths, "read_facts", lambda device: _facts(bf16_units=True))
    runner = fast_paths.choose(_big_model(), _batch(1, 64), _batch(2, 64))
    assert (runner.precision, runner.graph) == ("bf16", "frozen")
    line = next(r.getMessage() for r in caplog.records if "event=fast_path" in r.getMessage())
    for key in (
        "decided_by=rule",
        "chosen=bf16",
        "graph=frozen",
        "reason=bf16_units",
        "gflop_per_image=1.26",
        "bf16_units=true",
        "seconds=",
    ):
        assert key in line, line


def test_a_bf16_choice_the_probe_refutes_is_served_fp32(caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(fast_paths, "read_facts", lambda device: _facts(bf16_units=True))
    monkeypatch.setattr(fast_paths, "MIN_COSINE", 1.01)  # no bf16 answer is ever close enough
    runner = fast_paths.choose(_big_model(), _batch(1, 64), _batch(2, 64))
    assert runner.precision == "fp32" and "decided_by=rule chosen=fp32 graph=frozen reason=bf16_accuracy_risk" in caplog.text


def test_forcing_both_is_the_users_decision_and_measure_is_a_choice(caplog):
    caplog.set_level(logging.INFO)
    fast_paths.choose(_model(), _batch(1), _batch(2), precision="bf16", graph="eager")
    assert "decided_by=user chosen=bf16 graph=eager reason=forced" in caplog.text
    with pytest.raises(UserError, match="auto, measure, eager or frozen"):
        fast_paths.choose(_model(), _batch(1), _batch(2), graph="compiled")


def test_the_frozen_graph_answers_like_eager_for_every_batch_size():
    model = _model()
    frozen = fast_paths.build(model, "fp32", "frozen", _batch(1))
    assert frozen.graph == "frozen" and isinstance(frozen.module, torch.jit.ScriptModule)
    with torch.inference_mode():
        for n in (1, 3, 8):  # traced on one image, served on any batch
            expected = model(_batch(n)).softmax(dim=1)
            assert torch.allclose(frozen(_batch(n)).softmax(dim=1), expected, atol=1e-5)


@pytest.mark.parametrize("graph", ["eager", "frozen"])
def test_bf16_stays_close_to_fp32_and_answers_in_fp32(graph):
    model = _model()
    runner = fast_paths.build(model, "bf16", graph, _batch(1))
    with torch.inference_mode():
        expected, got = model(_batch(4)), runner(_batch(4))
    assert got.dtype == torch.float32 and next(model.parameters()).dtype == torch.float32  # the fp32 model is untouched
    assert torch.nn.functional.cosine_similarity(expected, got, dim=1).min() > 0.99


def test_measure_times_every_mode_and_logs_the_decision(caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(fast_paths, "MIN_GFLOP_FOR_BF16", 0.0)
    monkeypatch.setattr(fast_paths, "bf16_supported", lambda device: True)
    runner = fast_paths.choose(_model(), _batch(1), _batch(4), precision="measure")
    line = next(r.getMessage() for r in caplog.records if "event=fast_path" in r.getMessage())
    for key in ("decided_by=measure", "chosen=", "graph=", "reason=", "fp32_ms=", "bf16_ms=", "fp32_eager_ms=", "fp32_frozen_ms="):
        assert key in line, line
    winner = "eager" if runner.timings_ms["fp32_eager_ms"] <= runner.timings_ms["fp32_frozen_ms"] else "frozen"
    assert f"bf16_{winner}_ms=" in line, line  # bf16 is timed in the graph that won in fp32
    assert f"chosen={runner.precision} graph={runner.graph}" in line
    assert set(runner.timings_ms) >= {"fp32_ms", "bf16_ms"}


@pytest.mark.parametrize(
    ("settings", "reason", "chosen"),
    [
        ({"SPEED_UP_REQUIRED": 1e9}, "bf16_not_faster", "fp32"),  # bf16 never clearly faster
        ({"SPEED_UP_REQUIRED": 0.0, "MIN_COSINE": 1.01}, "bf16_accuracy_risk", "fp32"),  # faster, never close enough
        ({"MIN_GFLOP_FOR_BF16": 1e9}, "small_model", "fp32"),  # not worth trying
        ({"SPEED_UP_REQUIRED": 0.0, "MIN_COSINE": -1.0}, "bf16_faster", "bf16"),  # any bf16 wins
    ],
)
def test_the_bf16_decision_rules(monkeypatch, caplog, settings, reason, chosen):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(fast_paths, "MIN_GFLOP_FOR_BF16", 0.0)
    monkeypatch.setattr(fast_paths, "bf16_supported", lambda device: True)
    for name, value in settings.items():
        monkeypatch.setattr(fast_paths, name, value)
    runner = fast_paths.choose(_model(), _batch(1), _batch(4), precision="measure", graph="eager")
    assert runner.precision == chosen and f"reason={reason}" in caplog.text


def test_small_models_stay_fp32_whatever_the_timing(caplog):
    """Deterministic: every worker and the in-process reference of a small model answer in fp32 alike."""
    caplog.set_level(logging.INFO)
    runner = fast_paths.choose(_model(), _batch(1), _batch(2))
    assert runner.precision == "fp32" and "decided_by=rule" in caplog.text
    assert "reason=small_model" in caplog.text or "reason=no_bf16_units" in caplog.text


def test_an_untraceable_model_is_served_eager(caplog):
    class Untraceable(nn.Module):
        def forward(self, x):
            if torch.jit.is_tracing():
                raise RuntimeError("data-dependent control flow")
            return x.mean(dim=(2, 3))

    caplog.set_level(logging.WARNING)
    runner = fast_paths.choose(Untraceable(), _batch(1), _batch(2), precision="fp32", graph="frozen")
    assert runner.graph == "eager" and "event=serve_graph_failed" in caplog.text


@pytest.mark.parametrize("missing", ["trace", "freeze"])
def test_without_torchscript_serving_still_chooses_its_precision_and_answers(tiny_artifact, monkeypatch, caplog, missing):
    """torch.jit is deprecated: the day a torch ships without it, every model is served eager, bf16 still decided."""

    def gone(*_args, **_kwargs):
        raise RuntimeError("TorchScript is not available in this build of torch")

    caplog.set_level(logging.INFO)
    monkeypatch.setattr(torch.jit, missing, gone)
    monkeypatch.setattr(fast_paths, "MIN_GFLOP_FOR_BF16", 0.0)
    monkeypatch.setattr(fast_paths, "bf16_supported", lambda device: True)
    runner = fast_paths.choose(_model(), _batch(1), _batch(4), precision="measure")
    assert runner.graph == "eager" and runner.precision in ("fp32", "bf16")
    assert "event=serve_graph_failed precision=fp32 error=RuntimeError" in caplog.text
    assert f"chosen={runner.precision} graph=eager" in caplog.text and "bf16_eager_ms=" in caplog.text  # bf16 still timed
    monkeypatch.setattr(fast_paths, "read_facts", lambda device: _facts(bf16_units=True))
    caplog.clear()
    runner = fast_paths.choose(_big_model(), _batch(1, 64), _batch(2, 64))  # the rule: bf16 on these units, eager
    assert (runner.precision, runner.graph) == ("bf16", "eager") and "decided_by=rule" in caplog.text
    model = LoadedModel(tiny_artifact, precision="fp32", graph="auto")
    assert model.runner.graph == "eager"
    probabilities = model.predict([Image.new("RGB", (40, 30), (200, 10, 10))])
    assert len(probabilities[0]) == 3 and abs(sum(probabilities[0]) - 1) < 1e-5


@pytest.mark.parametrize(("name", "value"), [("IMAGE_CLASSIFIER_PRECISION", "fp16"), ("IMAGE_CLASSIFIER_GRAPH", "compiled")])
def test_unknown_settings_are_a_user_error(tiny_artifact, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=name):
        LoadedModel(tiny_artifact)


@pytest.mark.parametrize(("precision", "graph"), [("fp32", "eager"), ("fp32", "frozen"), ("bf16", "eager"), ("bf16", "frozen")])
def test_the_environment_forces_the_mode_and_predictions_stay_close(tiny_artifact, monkeypatch, caplog, precision, graph):
    caplog.set_level(logging.INFO)
    plain = LoadedModel(tiny_artifact, precision="fp32", graph="eager")
    monkeypatch.setenv("IMAGE_CLASSIFIER_PRECISION", precision)
    monkeypatch.setenv("IMAGE_CLASSIFIER_GRAPH", graph)
    fast = LoadedModel(tiny_artifact)
    assert (fast.runner.precision, fast.runner.graph) == (precision, graph)
    assert f"chosen={precision} graph={graph} reason=forced" in caplog.text
    images = [Image.effect_noise((40, 30), 60 + 20 * i).convert("RGB") for i in range(4)]
    tolerance = 1e-4 if precision == "fp32" else 2e-2
    for expected, got in zip(plain.predict(images), fast.predict(images), strict=True):
        assert got == pytest.approx(expected, abs=tolerance)


def test_large_jpegs_decode_at_reduced_scale_exactly_as_the_trainer_reads_them(tmp_path):
    import io

    import numpy as np

    from image_classifier.data.loading import load_rgb
    from image_classifier.serving.codec import decode_image

    photo = Image.radial_gradient("L").resize((2000, 1500)).convert("RGB")
    path = tmp_path / "big.jpg"
    photo.save(path, quality=90)
    data = path.read_bytes()
    served = decode_image(data, draft_size=256)
    assert served.size == (500, 375)  # 1/4 scale: the largest that keeps both sides >= 256
    assert np.array_equal(np.asarray(served), np.asarray(load_rgb(path, (256, 256))))
    assert decode_image(data).size == (2000, 1500)
    small = io.BytesIO()
    photo.resize((300, 200)).save(small, format="JPEG")
    assert decode_image(small.getvalue(), draft_size=256).size == (300, 200)  # never below the resize size


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_model_serves_from_the_gpu_and_answers_like_the_cpu(tiny_artifact, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    gpu = LoadedModel(tiny_artifact)
    assert gpu.device.type == "cuda" and "device=cuda" in caplog.text
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(params.ALLOW_CPU_ENV, "true")  # a GPU is visible: serving refuses the CPU unless told (found on an H200)
    cpu = LoadedModel(tiny_artifact, precision="fp32", graph="eager")
    images = [Image.effect_noise((40, 30), 60 + 20 * i).convert("RGB") for i in range(4)]
    tolerance = 1e-3 if gpu.runner.precision == "fp32" else 2e-2  # TF32 convolutions on Ampere and later
    for expected, got in zip(cpu.predict(images), gpu.predict(images), strict=True):
        assert got == pytest.approx(expected, abs=tolerance)


def test_a_card_without_a_temperature_serves_the_plain_softmax(tiny_artifact):
    """Cards written before calibration have no temperature: their answers do not change."""
    model = LoadedModel(tiny_artifact, precision="fp32", graph="eager")
    assert model.card.temperature is None and model.temperature == 1.0
    image = model.prepare(Image.new("RGB", (40, 30), (20, 200, 10)))
    expected = model.runner(model._batch([image])).softmax(dim=1)[0].tolist()
    assert model.predict_tensors([image])[0] == pytest.approx(expected, abs=1e-7)


def test_the_deciding_pair_is_timed_alternately_and_the_best_of_each_kept(monkeypatch):
    """On a clock the runners advance themselves: the order and the best-of are judged, not real sleeps."""
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(fast_paths.time, "perf_counter", lambda: clock.now)
    calls: list[str] = []
    a_costs = iter([0.020, 0.001, 0.001])  # a burst of load hits "a" on its first call only

    def a(x):
        calls.append("a")
        clock.now += next(a_costs)
        return x

    def b(x):
        calls.append("b")
        clock.now += 0.005
        return x

    a_ms, b_ms = fast_paths.time_pair_ms(a, b, _batch(1), rounds=3)
    assert calls == ["a", "b"] * 3
    assert (a_ms, b_ms) == (pytest.approx(1.0), pytest.approx(5.0))  # the burst did not decide: a's best is a quiet call


def test_a_deferred_graph_answers_eager_first_then_frozen_alike(tiny_artifact, caplog):
    """The worker answers while its frozen graph is built in a thread; the swap does not change the answers."""
    caplog.set_level(logging.INFO)
    model = LoadedModel(tiny_artifact, precision="fp32", defer_graph=True)
    images = [Image.effect_noise((40, 30), 60 + 20 * i).convert("RGB") for i in range(3)]
    first = model.predict(images)  # eager or frozen, whichever is in place: both must answer
    assert model.graph_ready.wait(60)
    assert model.runner.graph == "frozen" and "event=graph_ready graph=frozen precision=fp32" in caplog.text
    assert "graph=eager graph_deferred=frozen" in caplog.text  # what answered at load, and what was on its way
    for expected, got in zip(first, model.predict(images), strict=True):
        assert got == pytest.approx(expected, abs=1e-5)
    forced = LoadedModel(tiny_artifact, precision="fp32", graph="frozen", defer_graph=True)  # a forced graph is built at load
    assert forced.runner.graph == "frozen" and forced.graph_ready.is_set()


def test_weights_loaded_into_a_meta_built_network_answer_like_a_real_build(tiny_artifact, monkeypatch):
    from safetensors.torch import load_file

    from image_classifier.serving.model import with_weights

    weights = tiny_artifact / "model.safetensors"
    fast = with_weights("test_resnet", 3, weights)
    real = build_architecture("test_resnet", 3).eval()
    real.load_state_dict(load_file(str(weights)))
    batch = _batch(2)
    with torch.inference_mode():
        assert torch.equal(fast.eval()(batch), real(batch))
    assert not any(t.is_meta for t in [*fast.parameters(), *fast.buffers()])
    with pytest.raises(UserError, match="weights do not fit"):
        with_weights("test_resnet", 5, weights)  # a head of another size
