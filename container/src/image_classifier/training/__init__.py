"""The ``train`` command: the SageMaker training contract around a fine-tuning loop."""
