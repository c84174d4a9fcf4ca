"""Task-agnostic training: the modern replacement of the released trainer.

The released code trained with jaxline and `jax.pmap` (the released `train/experiment.py`), which no
longer run on current JAX. This package does the same job with `jax.jit` over
a named device mesh, optax and orbax:

  mesh.py         the ('data', 'fsdp') mesh, batch/parameter shardings,
                  global arrays from each process's rows
  step.py         TrainState and the pure train/eval steps (accumulation,
                  mixed precision, non-finite guard, rng folded in by step)
  optim.py        LAMB/AdamW, schedules, the weight-decay mask
  config.py       the fields every experiment config has, and their checks
  data.py         grain loaders: this process's rows of each global batch,
                  topology-independent augmentation, resumable state
  checkpoint.py   orbax checkpoints with grain's iterator state, damage
                  fallback
  preemption.py   SIGTERM: one agreed step to checkpoint and stop at
  metrics.py      metrics.jsonl (with data-wait and throughput),
                  TensorBoard, the PNG of training curves
  progress.py     the terminal progress bar
  distributed.py  multi-host start-up
  task.py         what an experiment hands the engine (model, data, its
                  evaluators and the init_params hook)
  evaluation.py   evaluators: named evaluations the engine jits, runs,
                  gathers from every process, reports and logs; the
                  metrics experiments share (PSNR, mAP)
  loop.py         train(): restore or warm-start, step, log, checkpoint,
                  evaluate (or only evaluate: eval_only)
  warm_start.py   init_checkpoint of any kind merged into the fresh model
                  (the init_params hook; init_must_load)
  restore.py      use a trained model: restore(workdir) -> (forward,
                  params, state, config) with predict(); export to .npz
"""

from perceiver.train.config import base_config
from perceiver.train.config import validate
from perceiver.train.evaluation import Evaluator
from perceiver.train.loop import train
from perceiver.train.task import Task
