"""Everything that drives AWS from the user's machine: ECR push, tuning, training, endpoints."""
