"""The ``serve`` command: a small front on :8080 in front of multi-model-server."""
