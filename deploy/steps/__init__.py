"""The pipeline's steps, one module per group; ``deploy.pipeline`` lists them in order.

Each step is a function of the ``Context``; what it creates is recorded in the run's state
before it is requested, so the same teardown releases it whatever happens next.
"""
