"""Task-agnostic training: mesh, step, optimizers, loop, checkpoints, metrics.

The modern replacement of the released jaxline/pmap trainer (MODELS.md 3):
`jax.jit` over a named device mesh, optax optimizers, orbax checkpoints.
"""

from perceiver.train.config import base_config
from perceiver.train.config import validate
from perceiver.train.loop import train
from perceiver.train.task import Task
