"""Not imported: this folder goes on the user script's PYTHONPATH in script mode (``sitecustomize``)."""
