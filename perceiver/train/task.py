"""What an experiment hands the engine: model, per-example metrics and data."""

from typing import (
  Any,
  Callable,
  Dict,
  NamedTuple,
  Optional,
  Protocol,
  Sequence,
  Tuple,
)

import haiku as hk
import jax
import ml_collections

from perceiver.train.evaluation import Evaluator


class DataIterator(Protocol):
  """Process-local training batches with a saveable position.

  `data.train_iterator` returns one; every checkpoint stores `get_state()`
  of each process (see `checkpoint.py`), and a restore calls `set_state`
  with this process's state and then `start_prefetch`. On another process
  count it calls `set_states(states of every old process)` instead, which
  an iterator may lack (such a run resumes only on as many processes).
  """

  def __next__(self) -> Dict[str, Any]: ...
  def get_state(self) -> bytes: ...
  def set_state(self, state: bytes) -> None: ...
  def start_prefetch(self) -> None: ...


class Task(NamedTuple):
  """A training task, model-agnostic from the engine's point of view.

  Attributes:
    forward: `forward.apply(params, state, rng, batch, is_training=...)`
      returns `(outputs, new_state)`.
    per_example: `(outputs, batch) -> {name: [B] array}` with a 'loss' entry;
      train metrics are their global-batch means (an evaluator with
      `predict=per_example` and the default `reduce` gives their means over
      an evaluation set).
    train_data: this process's rows of each global training batch.
    example_batch: a small batch, identical on every process, used only to
      initialise the parameters.
    evaluators: the task's named evaluations (`evaluation.Evaluator`:
      means of per-example metrics over held-out batches, whole-set metrics
      such as top-1 over a validation split, mAP, GLUE scores per dev split
      or EPE over full-size frames, each with its printed line and files),
      run by the engine every `eval_every` steps and at the end; their
      values are logged as `eval/<evaluator>/<metric>` (`eval/<metric>`
      for an evaluator named '') and written to result.json.
    init_params: `(params, state) -> (params, state)`, applied once to a
      freshly initialised model (never on resume) with host numpy trees of
      the same structure; used to start from a released or earlier
      checkpoint (`config.init_checkpoint`). The engine checks that every
      returned leaf has the initialised leaf's shape and dtype, then
      initialises the optimizer from the returned parameters. None: start
      from `config.seed`.
    config: the run's config with what the data decided filled in
      (`perceiver.train.config.from_data`: `num_train` as the reader
      counted it, `total_steps` following from it, e.g. `model.num_classes`
      from the class folders); the engine runs with it from then on
      (schedule, `config.json`, resume checks) and may only see fields that
      were None change. None: the config `build_task` was given.
  """

  forward: hk.TransformedWithState
  per_example: Callable[[Any, Any], Dict[str, jax.Array]]
  train_data: DataIterator
  example_batch: Dict[str, Any]
  evaluators: Sequence[Evaluator] = ()
  init_params: Optional[Callable[[Any, Any], Tuple[Any, Any]]] = None
  config: Optional[ml_collections.ConfigDict] = None
