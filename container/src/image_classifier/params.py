"""Every name shared between the trainer, the server, the launcher and the tests.

No environment-variable name, path fragment or artifact name is spelled twice in the code base:
it lives here (the AWS toolkits' ``params.py`` idea).
"""

from __future__ import annotations

# --- environment variables -------------------------------------------------------------------
BASE_DIR_ENV = "SAGEMAKER_BASE_DIR"  # read by both AWS toolkits; moves /opt/ml
DEFAULT_BASE_DIR = "/opt/ml"
SM_HOSTS_ENV = "SM_HOSTS"
SM_CURRENT_HOST_ENV = "SM_CURRENT_HOST"
SM_NUM_GPUS_ENV = "SM_NUM_GPUS"
SM_NUM_CPUS_ENV = "SM_NUM_CPUS"
SM_MODEL_DIR_ENV = "SM_MODEL_DIR"
SM_OUTPUT_DATA_DIR_ENV = "SM_OUTPUT_DATA_DIR"
SM_CHANNEL_PREFIX = "SM_CHANNEL_"
TRAINING_JOB_NAME_ENV = "TRAINING_JOB_NAME"
TRAINING_JOB_ARN_ENV = "TRAINING_JOB_ARN"  # set by SageMaker in every training job
SAMPLE_DIR_ENV = "IMAGE_CLASSIFIER_SAMPLE_DIR"  # the built-in sample; set by docker compose only
BAKED_WEIGHTS_DIR_ENV = "IMAGE_CLASSIFIER_PRETRAINED_DIR"  # weights baked into the image
DEFAULT_BAKED_WEIGHTS_DIR = "/opt/pretrained"
ALLOW_CPU_ENV = "IMAGE_CLASSIFIER_ALLOW_CPU"  # run on CPU although a GPU is expected and unusable
CUDA_COMPAT_DIR_ENV = "IMAGE_CLASSIFIER_CUDA_COMPAT_DIR"  # NVIDIA's forward-compatibility libraries
DEFAULT_CUDA_COMPAT_DIR = "/usr/local/cuda/compat"  # where NVIDIA's CUDA base images put them
HOST_WAIT_TIMEOUT_ENV = "IMAGE_CLASSIFIER_HOST_WAIT_SECONDS"
PROCESS_GROUP_TIMEOUT_ENV = "IMAGE_CLASSIFIER_PROCESS_GROUP_TIMEOUT_SECONDS"  # how long a collective waits for a missing rank
DEFAULT_PROCESS_GROUP_TIMEOUT_SECONDS = 1800
DEFAULT_HOST_WAIT_SECONDS = 300.0
MASTER_PORT = 29500
NCCL_SOCKET_IFNAME_ENV = "NCCL_SOCKET_IFNAME"  # set from resourceconfig.json's network_interface_name
GLOO_SOCKET_IFNAME_ENV = "GLOO_SOCKET_IFNAME"

# --- /opt/ml layout (relative to the base dir) -----------------------------------------------
CONFIG_DIR = "input/config"
HYPERPARAMETERS_FILE = "hyperparameters.json"
INPUT_DATA_CONFIG_FILE = "inputdataconfig.json"
RESOURCE_CONFIG_FILE = "resourceconfig.json"
DEBUG_HOOK_CONFIG_FILE = "debughookconfig.json"
DATA_DIR = "input/data"
MODEL_DIR = "model"
OUTPUT_DATA_DIR = "output/data"
TENSORBOARD_DIR = "output/tensorboard"
FAILURE_FILE = "output/failure"
CHECKPOINT_DIR = "checkpoints"

# --- channels --------------------------------------------------------------------------------
TRAIN_CHANNEL = "train"
VALIDATION_CHANNEL = "validation"
VALIDATION_ALIASES = ("validation", "valid", "val")
TEST_CHANNEL = "test"
TRAINING_CHANNEL = "training"  # one channel holding train/ valid/ test/ (the dog-breed zip)
PRETRAINED_CHANNEL = "pretrained"
MODEL_CHANNEL = "model"  # a previous model artifact, to warm-start

# --- model artifact --------------------------------------------------------------------------
WEIGHTS_FILE = "model.safetensors"
MODEL_CARD_FILE = "model_card.json"
MODEL_CARD_SCHEMA_VERSION = 1

# --- output data -----------------------------------------------------------------------------
METRICS_FILE = "metrics.json"
PER_CLASS_FILE = "per_class_metrics.csv"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
LEARNING_CURVES_FILE = "learning_curves.png"
RELIABILITY_FILE = "reliability_diagram.png"
REPORT_JSON_FILE = "training_report.json"
REPORT_HTML_FILE = "training_report.html"
PROFILER_DIR = "profiler"

# --- checkpoints -----------------------------------------------------------------------------
CHECKPOINT_PATTERN = "checkpoint-{epoch:04d}-{step:06d}.pt"
CHECKPOINT_GLOB = "checkpoint-*.pt"
CHECKPOINTS_KEPT = 2
FOREIGN_CHECKPOINTS_DIR = "foreign"  # another run's checkpoints found in ours, set aside
BEST_WEIGHTS_FILE = "best-model.safetensors"  # the best epoch's weights, beside the checkpoints

# --- serving ---------------------------------------------------------------------------------
BIND_PORT_ENV = "SAGEMAKER_BIND_TO_PORT"
WORKERS_ENV = "SAGEMAKER_MODEL_SERVER_WORKERS"
TIMEOUT_ENV = "SAGEMAKER_MODEL_SERVER_TIMEOUT"
MAX_PAYLOAD_ENV = "SAGEMAKER_MAX_PAYLOAD_IN_MB"
MULTI_MODEL_ENV = "SAGEMAKER_MULTI_MODEL"
BATCH_SIZE_ENV = "IMAGE_CLASSIFIER_BATCH_SIZE"  # MMS cross-request batching
MAX_BATCH_DELAY_ENV = "IMAGE_CLASSIFIER_MAX_BATCH_DELAY_MS"
BATCHES_IN_FLIGHT_ENV = "IMAGE_CLASSIFIER_BATCHES_IN_FLIGHT"  # envelopes at MMS per model (default: workers; 0: no cap)
THREADS_ENV = "IMAGE_CLASSIFIER_THREADS_PER_WORKER"
OMP_SPIN_ENV = "IMAGE_CLASSIFIER_OMP_SPIN"  # passive | default | a spin count: how the worker's OpenMP threads wait
MMS_PORT_ENV = "IMAGE_CLASSIFIER_MMS_PORT"  # internal inference port (management = +1)
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
DEFAULT_PORT = 8080
DEFAULT_MAX_PAYLOAD_MB = 6
DEFAULT_TIMEOUT_SECONDS = 60
DEFAULT_TOP_K = 5
SINGLE_MODEL_NAME = "model"
MAX_IMAGE_PIXELS = 40_000_000  # larger declared sizes are refused before decoding (at the real-time payload limit)
# Larger payloads (asynchronous endpoints): the limits follow SAGEMAKER_MAX_PAYLOAD_IN_MB up to a
# ceiling measured with real large JPEG and PNG files (docs/serving.md#limits, local/bench/large_payload.py)
REALTIME_MAX_PAYLOAD_MB = 6  # SageMaker's real-time limit; larger requests go to a worker alone, never batched
MAX_PAYLOAD_CEILING_MB = 64  # the most SAGEMAKER_MAX_PAYLOAD_IN_MB may say: serve refuses to start above it
PIXELS_PER_PAYLOAD_BYTE = 2  # the decode guard above the real-time limit: a photo's JPEG is < 1 byte a pixel, its PNG 2-3
JVM_BASE_HEAP_MB = 512  # multi-model-server's heap at the real-time limit (a 16-request envelope of 6 MB each)
JVM_HEAP_COPIES = 3  # copies of a large request MMS holds at once (netty's aggregate, the job's bytes, the frame to the worker)
MAX_IMAGES_PER_REQUEST = 64

# --- metrics (serving/metrics.py, docs/serving.md#metrics) ----------------------------------
METRICS_ENV = "IMAGE_CLASSIFIER_METRICS"  # on (default) | off: no EMF lines, no /metrics
METRICS_SAMPLE_ENV = "IMAGE_CLASSIFIER_METRICS_SAMPLE"  # fraction of requests whose latencies and sizes are recorded (counts: all)
METRICS_NAMESPACE_ENV = "IMAGE_CLASSIFIER_METRICS_NAMESPACE"  # the CloudWatch namespace of the EMF lines
DEFAULT_METRICS_NAMESPACE = "ImageClassifier"
EMF_FLUSH_SECONDS = 10.0  # an EMF line per model at most this often (sooner when a metric holds EMF_MAX_VALUES)
EMF_MAX_VALUES = 100  # values one EMF metric may carry (the format's limit)
# Set by the deploy pipeline on the endpoints it creates and promotes: every EMF line then also carries the
# dimensions Endpoint and ModelVersion (and /metrics the labels endpoint, model_version), so an alarm can
# watch one endpoint, or one version during a blue/green rollout (docs/serving.md#metrics, docs/aws.md).
ENDPOINT_ENV = "IMAGE_CLASSIFIER_ENDPOINT"
MODEL_VERSION_ENV = "IMAGE_CLASSIFIER_MODEL_VERSION"
ENDPOINT_DIMENSION = "Endpoint"
MODEL_VERSION_DIMENSION = "ModelVersion"
SERVER_ERRORS_METRIC = "ServerErrors"  # 5xx answers per Endpoint and ModelVersion: what a rollback alarm sums

# --- script mode: the user's own code (docs/script-mode.md) ----------------------------------
# Training: the SDK's entry_point/source_dir arrive as these hyperparameters; sagemaker-training runs them.
PROGRAM_PARAM = "sagemaker_program"
TORCH_DISTRIBUTED_PARAM = "sagemaker_torch_distributed_enabled"  # distribution={"torch_distributed": ...}
PROCESSES_PER_HOST_PARAM = "sagemaker_mpi_num_of_processes_per_host"  # what sagemaker-training's runners read
TRAINING_MODULE_ENV = "SAGEMAKER_TRAINING_MODULE"  # sagemaker-training's hook for a framework's launcher
STUDIO_LOCAL_MODE_ENV = "SM_STUDIO_LOCAL_MODE"  # "true": sagemaker-training skips its 15-minute DNS wait
SCRIPT_ERROR_FILE_ENV = "IMAGE_CLASSIFIER_SCRIPT_ERROR_FILE"  # where the script's uncaught exception is recorded (script_hook)
# Serving: sagemaker-inference's contract, a model's code/<SAGEMAKER_PROGRAM> (default inference.py)
USER_PROGRAM_ENV = "SAGEMAKER_PROGRAM"
DEFAULT_USER_PROGRAM = "inference.py"
USER_CODE_DIR = "code"
REQUIREMENTS_FILE = "requirements.txt"
CODEARTIFACT_ENV = "CA_REPOSITORY_ARN"  # both toolkits install requirements from this CodeArtifact repository

# --- training caches -------------------------------------------------------------------------
CACHE_DIR_ENV = "IMAGE_CLASSIFIER_CACHE_DIR"  # where cache_images=disk writes (default: the temp dir)

# --- serving fast paths (serving/fast_paths.py) ----------------------------------------------
PRECISION_ENV = "IMAGE_CLASSIFIER_PRECISION"  # auto (the rule, serving/fast_path_rule.py) | measure (timed at load) | fp32 | bf16
GRAPH_ENV = "IMAGE_CLASSIFIER_GRAPH"  # auto | measure | eager | frozen (torch.jit trace + freeze)
PREFORK_ENV = (
    "IMAGE_CLASSIFIER_PREFORK"  # on (default) | off: each worker forked from one interpreter with torch imported (serving/prefork.py)
)

# --- explanations (serving/explain.py, docs/serving.md#explanations) -------------------------
EXPLAIN_ENV = "IMAGE_CLASSIFIER_EXPLAIN"  # a method: every request explained unless it says explain=off (batch transform)
EXPLAIN_METHODS = ("auto", "gradcam", "integrated_gradients", "saliency")
EXPLAIN_OFF = "off"
EXPLAIN_GRID = 7  # cells per side of the grid in the answer (ResNet-50's own feature map at 224 px)
EXPLAIN_IG_STEPS = 16  # Integrated Gradients' path steps: 16 forward+backward passes per image
EXPLAIN_IG_BATCH = 32  # at most this many path points through the model at once (memory)
EXPLAIN_COLORMAP = "jet"
MAX_EXPLAINED_IMAGES = 16  # per request with explain=: bounds its time (60 s) and its answer (6 MB)
MAX_RESPONSE_BYTES = 6 * 1024 * 1024  # SageMaker's real-time response limit: overlays beyond it are left out
