"""Fine-tune and serve image classifiers under the SageMaker bring-your-own-container contract."""

__version__ = "0.1.0"
