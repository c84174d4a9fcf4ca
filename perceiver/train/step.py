"""The pure train step `(train_state, batch) -> (train_state, metrics)`.

Shapes: B global batch, A accumulation steps (microbatches), B/A microbatch.

The step is model-agnostic. It takes

- `forward`: any `hk.TransformedWithState` whose apply is called as
  `forward.apply(params, state, rng, batch, is_training=...)` and returns
  `(outputs, new_state)`;
- `per_example`: `(outputs, batch) -> {name: [B] float32}`, which must contain
  'loss'; every entry is averaged over the global batch (so the loss is the
  mean over the global batch whatever the device count).

Randomness: the step's rng is `fold_in(train_state.rng, train_state.step)`
(and then the microbatch index), so it depends only on the step, never on the
number of devices: with `jax_threefry_partitionable` the random bits of a
global array do not depend on its sharding.

Non-finite guard: an update whose loss or gradient norm is not finite is not
applied (parameters, optimizer and model state are kept); the state counts
such steps and remembers the first one, and the loop stops the run (or, if the
config says so, carries on) — see `loop.py`.
"""

import functools
from typing import Any, Callable, Dict, NamedTuple, Optional

import haiku as hk
import jax
import jax.numpy as jnp
import jmp
import optax


PerExampleFn = Callable[[Any, Any], Dict[str, jax.Array]]


class TrainState(NamedTuple):
  """Everything a run needs to continue; checkpointed as one pytree."""

  step: jax.Array  # int32 scalar: number of updates applied or skipped
  params: Any  # hk.Params, float32
  state: Any  # hk.State (e.g. BatchNorm statistics)
  opt_state: Any  # optax state
  rng: jax.Array  # base PRNG key data (uint32 [2]); never split
  nonfinite_count: jax.Array  # int32: how many updates were skipped
  first_nonfinite: jax.Array  # int32: step of the first skipped update, or -1


def init_train_state(
  forward: hk.TransformedWithState,
  optimizer: optax.GradientTransformation,
  seed: int,
  example_batch: Any,
) -> TrainState:
  """Initialises parameters, model state and optimizer state from `seed`."""
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  params, state = forward.init(init_rng, example_batch, is_training=True)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    state=state,
    opt_state=optimizer.init(params),
    rng=train_rng,
    nonfinite_count=jnp.zeros((), jnp.int32),
    first_nonfinite=jnp.full((), -1, jnp.int32),
  )


def make_policy(name: Optional[str]) -> jmp.Policy:
  """A jmp policy from its name: 'float32', 'bfloat16' or a jmp string.

  'bfloat16' means parameters float32, compute bfloat16, output float32.
  """
  if not name or name == 'float32':
    return jmp.get_policy('params=float32,compute=float32,output=float32')
  if name == 'bfloat16':
    return jmp.get_policy('params=float32,compute=bfloat16,output=float32')
  return jmp.get_policy(name)


def _split_microbatches(batch: Any, num: int) -> Any:
  """[B, ...] -> [A, B/A, ...], taking every A-th example for a microbatch.

  Strided (not contiguous) so that each microbatch keeps examples from every
  device's shard: the batch stays split over the devices and no example moves.
  """

  def one(x):
    x = x.reshape((x.shape[0] // num, num) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  return jax.tree.map(one, batch)


def make_train_step(
  forward: hk.TransformedWithState,
  per_example: PerExampleFn,
  optimizer: optax.GradientTransformation,
  *,
  accumulation_steps: int = 1,
  precision: Optional[str] = None,
  schedule: Optional[optax.Schedule] = None,
  batch_constraint: Optional[Any] = None,
) -> Callable:
  """Builds the (un-jitted) train step; `loop.train` jits it.

  Args:
    forward: the model, a `hk.TransformedWithState`.
    per_example: maps `(outputs, batch)` to per-example float arrays, with a
      'loss' entry.
    optimizer: the optax transformation.
    accumulation_steps: A; the global batch is processed as A microbatches
      of B/A examples whose gradients are averaged before one update. Model
      state (BatchNorm) is threaded through the microbatches in order.
    precision: mixed-precision policy name (see `make_policy`).
    schedule: if given, the learning rate is reported in the metrics.
    batch_constraint: a sharding for a microbatch (keeps it split over the
      devices inside the accumulation loop).

  Returns:
    `step(train_state, batch) -> (train_state, metrics)`.
  """
  policy = make_policy(precision)

  def loss_fn(params, model_state, rng, batch):
    compute_params = policy.cast_to_compute(params)
    compute_batch = policy.cast_to_compute(batch)
    outputs, new_state = forward.apply(
      compute_params, model_state, rng, compute_batch, is_training=True
    )
    outputs = policy.cast_to_output(outputs)
    values = per_example(outputs, batch)
    means = {k: jnp.mean(v.astype(jnp.float32)) for k, v in values.items()}
    return means['loss'], (new_state, means)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(ts: TrainState, batch: Any):
    rng = jax.random.fold_in(ts.rng, ts.step)
    if accumulation_steps == 1:
      (_, (new_state, means)), grads = grad_fn(ts.params, ts.state, rng, batch)
    else:
      micro = _split_microbatches(batch, accumulation_steps)

      def body(carry, xs):
        grads_acc, means_acc, model_state = carry
        index, mb = xs
        if batch_constraint is not None:
          mb = jax.lax.with_sharding_constraint(mb, batch_constraint)
        (_, (model_state, m)), g = grad_fn(
          ts.params, model_state, jax.random.fold_in(rng, index), mb
        )
        grads_acc = jax.tree.map(jnp.add, grads_acc, g)
        means_acc = jax.tree.map(jnp.add, means_acc, m)
        return (grads_acc, means_acc, model_state), None

      zeros = jax.tree.map(jnp.zeros_like, ts.params)
      mean_shapes = jax.eval_shape(
        lambda: loss_fn(
          ts.params, ts.state, rng, jax.tree.map(lambda x: x[0], micro)
        )[1][1]
      )
      zero_means = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype), mean_shapes
      )
      (grads, means, new_state), _ = jax.lax.scan(
        body,
        (zeros, zero_means, ts.state),
        (jnp.arange(accumulation_steps), micro),
      )
      grads = jax.tree.map(lambda g: g / accumulation_steps, grads)
      means = jax.tree.map(lambda m: m / accumulation_steps, means)

    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(means['loss']) & jnp.isfinite(grad_norm)
    updates, new_opt_state = optimizer.update(grads, ts.opt_state, ts.params)
    new_params = optax.apply_updates(ts.params, updates)

    keep = functools.partial(jnp.where, finite)
    new_ts = TrainState(
      step=ts.step + 1,
      params=jax.tree.map(keep, new_params, ts.params),
      state=jax.tree.map(keep, new_state, ts.state),
      opt_state=jax.tree.map(keep, new_opt_state, ts.opt_state),
      rng=ts.rng,
      nonfinite_count=ts.nonfinite_count + (~finite).astype(jnp.int32),
      first_nonfinite=jnp.where(
        (ts.first_nonfinite < 0) & ~finite, ts.step, ts.first_nonfinite
      ),
    )
    metrics = dict(
      means, grad_norm=grad_norm, finite=finite.astype(jnp.float32)
    )
    if schedule is not None:
      # Skipped updates leave the optimizer's own step count behind.
      applied = ts.step - ts.nonfinite_count
      metrics['learning_rate'] = jnp.asarray(schedule(applied), jnp.float32)
    return new_ts, metrics

  return step
