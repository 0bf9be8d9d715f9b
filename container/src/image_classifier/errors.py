"""Errors whose message is the reason a user reads in ``/opt/ml/output/failure``."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the job's input (data, hyperparameters, configuration), not a bug.

    The message must name the offending thing (file, class, channel, hyperparameter) so that the
    one-line failure reason is enough to fix the job.
    """
