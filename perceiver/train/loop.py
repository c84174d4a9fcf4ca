"""The training loop: restore or initialise, step, log, checkpoint, evaluate.

`train(config, build_task, workdir)` runs one job on every device of every
process (call `distributed.initialize` first on multi-host jobs):

1. check the config (before compiling anything);
2. build the mesh, the task (model + this process's data) and the optimizer;
   from then on the run uses the task's config (`Task.config`: the
   training set's size and what follows from it, as the task's readers
   found them; see `config.from_data`), and says where `num_train` and
   `total_steps` came from;
3. compare the config with the workdir's checkpoints before writing
   anything there (`check_workdir`): checkpoints made for other parameter
   shapes are refused (a ValueError naming the parameter and both shapes;
   `config.json` is left as it is), other changed fields are listed; a
   finished run (a checkpoint at `total_steps` and a `result.json`) is left
   untouched ("already finished"). Then restore the latest readable
   checkpoint from `<workdir>/checkpoints`, or initialise from
   `config.seed`, and write `config.json` and `experiment.json` (the
   experiment file that made the run, for `restore.restore(workdir)`);
4. run `jax.jit`-compiled train steps with donated state until
   `config.total_steps`, logging every `log_every` steps and checkpointing
   every `checkpoint_every` steps (and at the end);
5. evaluate on the task's held-out data, every `eval_every` steps and at the
   end.

On SIGTERM (see `preemption.py`) every process stops after the same step,
checkpoints it and `train` raises `preemption.Preempted` naming the step;
`experiments.main` exits with `preemption.PREEMPTED_EXIT_CODE` (75). Each
logged training record carries the time the loop waited for its batches and
the input throughput (`metrics.InputTimer`).

Host-side metrics are read one step late (after the next step has been
dispatched), so reading them never stalls the device pipeline. A non-finite
loss or gradient norm is never applied (see `step.py`); with
`nonfinite='stop'` the run raises `FloatingPointError` naming the step, before
any later checkpoint is written, so the last checkpoint is a good one.
"""

import json
import os
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from absl import logging
import jax
import ml_collections
import numpy as np

from perceiver.train import aot
from perceiver.train import checkpoint as checkpoint_lib
from perceiver.train import config as config_lib
from perceiver.train import data as data_lib
from perceiver.train import distributed
from perceiver.train import evaluation as evaluation_lib
from perceiver.train import mesh as mesh_lib
from perceiver.train import metrics as metrics_lib
from perceiver.train import optim
from perceiver.train import preemption
from perceiver.train import progress as progress_lib
from perceiver.train import restore as restore_lib
from perceiver.train import step as step_lib
from perceiver.train.task import Task

BuildTask = Callable[[ml_collections.ConfigDict, int, int], Task]


def _is_chief() -> bool:
  return jax.process_index() == 0


_say = distributed.say


def _write(path: str, text: str) -> None:
  """Writes `text` to `path` atomically (a reader sees all of it or none)."""
  with open(path + '.tmp', 'w') as f:
    f.write(text)
  os.replace(path + '.tmp', path)


def save_config(
  config: ml_collections.ConfigDict,
  workdir: str,
  experiment: Optional[Dict[str, Any]] = None,
) -> None:
  """Writes the effective config to `<workdir>/config.json` (process 0).

  With `experiment` (a `restore.experiment_record`), also writes it to
  `<workdir>/experiment.json`.
  """
  if not _is_chief():
    return
  os.makedirs(workdir, exist_ok=True)
  if experiment is not None:
    _write(
      os.path.join(workdir, restore_lib.EXPERIMENT_JSON),
      json.dumps(experiment, indent=2, sort_keys=True),
    )
  _write(
    os.path.join(workdir, 'config.json'),
    config.to_json_best_effort(indent=2, sort_keys=True),
  )


def _flat(tree: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def config_changes(
  config: ml_collections.ConfigDict, workdir: str
) -> List[Tuple[str, Any, Any]]:
  """(field, value in `<workdir>/config.json`, value in `config`) of every
  field that differs; [] when there is no readable config.json."""
  path = os.path.join(workdir, 'config.json')
  try:
    with open(path) as f:
      old = _flat(json.load(f))
  except (OSError, ValueError):
    return []
  new = _flat(json.loads(config.to_json_best_effort()))
  absent = '(absent)'
  return [
    (k, old.get(k, absent), new.get(k, absent))
    for k in sorted(old.keys() | new.keys())
    if old.get(k, absent) != new.get(k, absent)
  ]


def check_workdir(
  config: ml_collections.ConfigDict, workdir: str, abstract: Any
) -> Optional[int]:
  """Compares `config` with the checkpoints in `workdir`; touches nothing.

  Args:
    config: the config of this run.
    workdir: the run's workdir.
    abstract: the `TrainState` of `jax.ShapeDtypeStruct`s this config makes.

  Returns:
    The step of the newest checkpoint, or None if there is none. Config
    fields changed since `config.json` (that leave every parameter shape
    as it is) are listed on process 0, one line per field.

  Raises:
    ValueError: a parameter (or model state) of the checkpoints has another
      shape, or is missing or extra, under this config; names it, both
      shapes and the changed config fields.
  """
  directory = os.path.join(workdir, 'checkpoints')
  stored = checkpoint_lib.stored_shapes(directory)
  if stored is None:
    return None
  step, shapes = stored
  changes = config_changes(config, workdir)
  problems = []
  for name in ('params', 'state'):
    want = checkpoint_lib.flat_shapes(getattr(abstract, name))
    have = shapes[name]
    for path in sorted(want.keys() | have.keys()):
      w, h = want.get(path), have.get(path)
      if w == h:
        continue
      if h is None:
        what = 'is not in the checkpoints'
      elif w is None:
        what = f'{h} is in the checkpoints, not in the model of this config'
      else:
        what = f'has shape {h} in the checkpoints, {w} with this config'
      problems.append(f'{name}{path} {what}')
  if problems:
    more = f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''
    listed = ', '.join(f'{k} {o!r} -> {n!r}' for k, o, n in changes[:6])
    if len(changes) > 6:
      listed += f' and {len(changes) - 6} more'
    raise ValueError(
      f'workdir: the checkpoints in {directory} (step {step}) do not fit '
      f'this config: {problems[0]}{more}.\n'
      f'Config fields changed since they were made: {listed or "unknown"}.'
      f'\nNothing in {workdir} was changed; undo the change or use another '
      '--workdir.'
    )
  if changes:
    _say(
      f'Config changed since the checkpoints in {workdir} (no parameter '
      'shape changes):'
    )
    for k, o, n in changes:
      _say(f'  {k}: {o!r} -> {n!r}')
  return step


def _finished(
  config, task: Task, workdir: str, step: int, abstract
) -> Dict[str, Any]:
  """train()'s result for a finished run, restored; writes nothing."""
  _say(f'{workdir}: already finished at step {step}; nothing to do.')
  checkpointer = checkpoint_lib.Checkpointer(
    os.path.join(workdir, 'checkpoints'), max_to_keep=config.keep_checkpoints
  )
  try:
    step, ts = checkpointer.restore_latest(abstract, task.train_data)
  finally:
    checkpointer.close()
    close_data = getattr(task.train_data, 'close', None)
    if close_data is not None:
      close_data()
  with open(os.path.join(workdir, 'result.json')) as f:
    summary = json.load(f)
  return {
    'train_state': ts,
    'start_step': step,
    'losses': {},
    'eval': {k: v for k, v in summary.items() if k.startswith('eval/')},
    'nonfinite_count': int(jax.device_get(ts.nonfinite_count)),
  }


def _warm_start(
  ts: step_lib.TrainState, task: Task, optimizer, shardings
) -> step_lib.TrainState:
  """`ts` with `task.init_params` applied and a fresh optimizer state."""
  params, state = task.init_params(
    jax.device_get(ts.params), jax.device_get(ts.state)
  )
  for name, want, got in (
    ('params', ts.params, params),
    ('state', ts.state, state),
  ):
    want_paths = dict(jax.tree_util.tree_flatten_with_path(want)[0])
    got_paths = dict(jax.tree_util.tree_flatten_with_path(got)[0])
    if want_paths.keys() != got_paths.keys():
      missing = sorted(map(jax.tree_util.keystr, want_paths - got_paths))
      extra = sorted(map(jax.tree_util.keystr, got_paths - want_paths))
      raise ValueError(
        f'task.init_params: expected the initialised {name} tree; missing '
        f'{missing[:5]}, unexpected {extra[:5]}.'
      )
    for path, w in want_paths.items():
      g = got_paths[path]
      if np.shape(g) != w.shape or np.asarray(g).dtype != w.dtype:
        raise ValueError(
          f'task.init_params: {name}{jax.tree_util.keystr(path)} expected '
          f'{w.dtype}{list(w.shape)}, got '
          f'{np.asarray(g).dtype}{list(np.shape(g))}.'
        )
  rebuild = lambda t, p, s: t._replace(
    params=p, state=s, opt_state=optimizer.init(p)
  )
  return jax.jit(rebuild, out_shardings=shardings)(ts, params, state)


def _skipped_records(data) -> float:
  """Unreadable records replaced so far, over all processes."""
  count = np.int64(getattr(data, 'skipped_records', 0))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    count = multihost_utils.process_allgather(count).sum()
  return float(count)


class Steps(NamedTuple):
  """The jitted functions of a run and the placement of its state.

  Attributes:
    train_step: `jax.jit` of `step.make_train_step(...)`: `(TrainState,
      batch) -> (TrainState, metrics)`, state donated, the batch split over
      every device (`mesh.batch_sharding`), metrics replicated.
    init_fn: `() -> TrainState` from `config.seed` (un-jitted).
    abstract: the `TrainState` of `jax.ShapeDtypeStruct`s, each carrying
      its sharding.
    shardings: the `TrainState` of `NamedSharding`s (replicated, or FSDP
      over the mesh's 'fsdp' axis when `config.fsdp > 1`).
    optimizer: the optax transformation of `config.optimizer`.
  """

  train_step: Callable
  init_fn: Callable[[], step_lib.TrainState]
  abstract: step_lib.TrainState
  shardings: step_lib.TrainState
  optimizer: Any


def jit_steps(config: ml_collections.ConfigDict, task: Task, mesh) -> Steps:
  """The train step `train` runs, jitted for `mesh`; compiles
  nothing (`aot.compile_report` lowers the same functions for a TPU slice).

  Args:
    config: an experiment config (see `config.base_config`), validated.
    task: the experiment's task; only `forward`, `per_example` and
      `example_batch` are used.
    mesh: the ('data', 'fsdp') mesh (`mesh.make_mesh`).
  """
  schedule = optim.make_schedule(
    config.optimizer, config.batch_size, config.total_steps
  )
  optimizer = optim.make_optimizer(config.optimizer, schedule)
  init_fn = lambda: step_lib.init_train_state(
    task.forward, optimizer, config.seed, task.example_batch
  )
  abstract = jax.eval_shape(init_fn)
  shardings = mesh_lib.state_shardings(
    mesh, abstract, shard_params=config.fsdp > 1
  )
  abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    abstract,
    shardings,
  )
  batch_sharding = mesh_lib.batch_sharding(mesh)
  replicated = mesh_lib.replicated(mesh)
  train_step = jax.jit(
    step_lib.make_train_step(
      task.forward,
      task.per_example,
      optimizer,
      accumulation_steps=config.accumulation_steps,
      precision=config.precision,
      schedule=schedule,
      batch_constraint=batch_sharding,
    ),
    in_shardings=(shardings, batch_sharding),
    out_shardings=(shardings, replicated),
    donate_argnums=(0,),
  )
  return Steps(train_step, init_fn, abstract, shardings, optimizer)


def task_config(
  config: ml_collections.ConfigDict, task: Task, devices: list
) -> ml_collections.ConfigDict:
  """The config the run uses: `task.config` (checked like `config`) or
  `config`; prints `config.data_summary` of it.

  Raises:
    ValueError: `task.config` changes a field that was set (not None), or
      `total_steps` is still None (the task reported no `num_train`).
  """
  used = config if task.config is None else task.config
  given, now = config_lib.flat_fields(config), config_lib.flat_fields(used)
  changed = sorted(set(given) ^ set(now)) or [
    n for n in sorted(given) if given[n] is not None and given[n] != now[n]
  ]
  if changed:
    raise ValueError(
      f'task.config: expected the fields of the config with only None '
      f'ones filled in, got other fields or changed values: {changed}.'
    )
  if used.total_steps is None:
    raise ValueError(
      'total_steps: expected a positive integer, or num_train from the '
      "task's data (Task.config, see config.from_data), got None."
    )
  if task.config is not None:
    config_lib.validate(
      used, device_count=len(devices), process_count=jax.process_count()
    )
  summary = config_lib.data_summary(config, used)
  if summary:
    _say(summary)
  return used


def _compile_step(train_step, ts, batch, run_timer) -> float:
  """Compiles the train step for (ts, batch) before its first call (which
  then finds it in JAX's compilation cache: tracing it again is the only
  extra cost); returns its FLOPs per step per device (`aot.compile_costs`)
  and adds the time to 'compile'."""
  with run_timer.timing('compile'):
    costs = aot.compile_costs(train_step, ts, batch)
  _say(
    f'Compiled the train step in {costs["compile_s"]:.1f}s: '
    f'{costs["step_flops"] / 1e9:.3f} GFLOP per step per device.'
  )
  return costs['step_flops']


def train(
  config: ml_collections.ConfigDict,
  build_task: BuildTask,
  workdir: str,
  devices: Optional[list] = None,
  experiment: Optional[str] = None,
) -> Dict[str, Any]:
  """Trains (or resumes) the job described by `config` in `workdir`.

  Args:
    config: an experiment config (see `config.base_config`).
    build_task: `(config, process_index, process_count) -> Task`.
    workdir: where the config, metrics, plots and checkpoints go.
    devices: the devices of the mesh (default: every device of every
      process); tests use it to compare device counts in one process.
    experiment: the experiment file that made `config`, 'FILE[:variant]'
      (what `--config` names); recorded in `<workdir>/experiment.json` with
      `config.json`, for `restore.restore(workdir)`. Default: the file of
      `build_task` when it is an experiment's `build_task` function.

  Returns:
    A dict with 'train_state' (final), 'start_step' (0 or the restored
    step), 'losses' ({step: loss} for the steps this call ran), 'eval' (the
    final evaluation metrics) and 'nonfinite_count'.
  """
  run_timer = metrics_lib.RunTimer()
  devices = list(jax.devices() if devices is None else devices)
  # Before validate: a resume on a topology that cannot continue the run
  # is named as such (elastic resume, see checkpoint.py).
  checkpoint_lib.check_topology(
    os.path.join(workdir, 'checkpoints'),
    config,
    device_count=len(devices),
    process_count=jax.process_count(),
  )
  config_lib.validate(
    config, device_count=len(devices), process_count=jax.process_count()
  )

  mesh = mesh_lib.make_mesh(config.fsdp, devices)
  task = build_task(config, jax.process_index(), jax.process_count())
  config = task_config(config, task, devices)
  data_lib.check_batch_keys(task.example_batch, 'task.example_batch')
  if config.get('init_checkpoint') and task.init_params is None:
    raise ValueError(
      "init_checkpoint: expected '' (this experiment's task does not "
      f'warm-start: no Task.init_params), got {config.init_checkpoint!r}.'
    )
  steps = jit_steps(config, task, mesh)
  optimizer, shardings, abstract = (
    steps.optimizer,
    steps.shardings,
    steps.abstract,
  )
  init_fn = steps.init_fn

  # Before anything in the workdir is written: refuse checkpoints made for
  # other shapes, and leave a finished run as it is.
  stored_step = check_workdir(config, workdir, abstract)
  # The warm start reads init_checkpoint on a fresh start only: a run that
  # resumes from its own checkpoints no longer needs the file.
  init_path = config.get('init_checkpoint')
  if stored_step is None and init_path and not os.path.exists(init_path):
    raise ValueError(
      f'init_checkpoint: expected an existing checkpoint file, workdir or '
      f'checkpoint directory, got {init_path!r}.'
    )
  if (
    stored_step is not None
    and stored_step >= config.total_steps
    and not config.eval_only
    and os.path.exists(os.path.join(workdir, 'result.json'))
  ):
    return _finished(config, task, workdir, stored_step, abstract)
  if not (config.eval_only and stored_step is not None):
    save_config(
      config, workdir, restore_lib.experiment_record(experiment, build_task)
    )

  checkpointer = checkpoint_lib.Checkpointer(
    os.path.join(workdir, 'checkpoints'),
    max_to_keep=config.keep_checkpoints,
    async_save=config.async_checkpoint,
  )
  restored = checkpointer.restore_latest(abstract, task.train_data)
  if config.eval_only and restored is None and task.init_params is None:
    raise ValueError(
      f'eval_only: expected a checkpoint in {checkpointer.directory} or a '
      'task that warm-starts (init_checkpoint), got neither; evaluating a '
      'random initialisation is not what eval_only is for.'
    )
  if config.eval_only and not task.evaluators:
    raise ValueError('eval_only: expected a task with evaluators, got none.')
  if restored is None:
    start_step = 0
    ts = jax.jit(init_fn, out_shardings=shardings)()
    if task.init_params is None:
      _say(f'Initialised from seed {config.seed}.')
    else:
      ts = _warm_start(ts, task, optimizer, shardings)
      _say("Initialised from the task's init_params (warm start).")
  else:
    start_step, ts = restored
    _say(f'Resumed from the checkpoint at step {start_step}.')

  train_step = steps.train_step
  runner = None
  if task.evaluators:
    runner = evaluation_lib.Runner(
      task.evaluators,
      task.forward,
      precision=config.precision,
      mesh=mesh,
      param_shardings=shardings.params,
      state_shardings=shardings.state,
    )

  writer = metrics_lib.MetricWriter(
    workdir,
    enabled=_is_chief(),
    resume_step=start_step,
    # The final evaluation of a run stopped just after its last checkpoint
    # is run again: drop the one it may have written.
    drop_eval_at_resume=start_step >= config.total_steps
    and not config.eval_only,
    tensorboard=config.tensorboard,
  )
  bar = progress_lib.ProgressBar(
    config.total_steps, enabled=_is_chief() and config.progress_bar
  )
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(ts.params))
  _say(
    f'{n_params / 1e6:.3f}M parameters; {len(devices)} devices on '
    f'{jax.process_count()} process(es); mesh {dict(mesh.shape)}; '
    f'global batch {config.batch_size}.'
  )

  losses: Dict[int, float] = {}
  last_saved = start_step
  eval_metrics: Dict[str, float] = {}

  timer = metrics_lib.InputTimer(config.batch_size, start_step)
  count_skips = bool(config.get('data', {}).get('skip_corrupt', False))
  chip = aot.chip_of_device_kind(devices[0].device_kind)
  peak_flops = aot.per_device(aot.CHIPS[chip])['peak_flops'] if chip else None
  step_flops: Optional[float] = None  # per device, from the compiled step

  def consume(step_done: int, metrics) -> None:
    """Host-side handling of the metrics of the update that made step_done."""
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    losses[step_done] = values['loss']
    if not values.pop('finite'):
      where = (
        f'Non-finite loss or gradient at step {step_done} '
        f'(loss={values["loss"]}, grad_norm={values["grad_norm"]}); '
        'the update was not applied'
      )
      if config.nonfinite == 'stop':
        raise FloatingPointError(
          f'{where}. Stopping; the last good checkpoint (step '
          f'{last_saved}) in {checkpointer.directory} is intact.'
        )
      logging.warning('%s; skipping it (nonfinite=skip).', where)
    last = step_done == config.total_steps
    if step_done % config.log_every == 0 or last:
      values.update(timer.read(step_done))
      if step_flops is not None:
        rate = step_flops * values['examples_per_s'] / config.batch_size
        values['perf/step_flops'] = step_flops
        values['perf/tflops_per_device'] = rate / 1e12
        if peak_flops:
          values['perf/mfu'] = rate / peak_flops
      values.update(run_timer.read())
      if count_skips:
        values['skipped_records'] = _skipped_records(task.train_data)
      writer.write(step_done, values)
      bar.perf(values.get('perf/tflops_per_device'), values.get('perf/mfu'))
    bar.update(step_done, values['loss'], force=last, data_wait=timer.fraction)

  pending: Optional[tuple] = None
  preempted_at = None
  t0 = time.time()
  run_timer.start_steps()
  try:
    with preemption.Watcher() as watcher:
      last_step = start_step if config.eval_only else config.total_steps
      for step in range(start_step, last_step):
        asked = time.perf_counter()
        local = next(task.train_data)
        if step == start_step:
          data_lib.check_batch_keys(local, 'task.train_data')
        batch = mesh_lib.global_batch(local, mesh)
        timer.waited(time.perf_counter() - asked)
        run_timer.add('data_wait', time.perf_counter() - asked)
        if step == start_step:
          step_flops = _compile_step(train_step, ts, batch, run_timer)
          timer.restart(step)  # The rates leave the compilation out.
        ts, metrics = train_step(ts, batch)
        if pending is not None:
          consume(*pending)
        pending = (step + 1, metrics)
        step_done = step + 1
        last = step_done == config.total_steps
        preempted = watcher.reached(step_done) and not last
        if step_done % config.checkpoint_every == 0 or last or preempted:
          consume(*pending)
          pending = None
          with run_timer.timing('checkpoint'):
            checkpointer.save(step_done, ts, task.train_data, force=True)
          last_saved = step_done
        if preempted:
          preempted_at = step_done
          break
        if (
          runner is not None
          and config.eval_every
          and step_done % config.eval_every == 0
          and not last
        ):
          if pending is not None:
            consume(*pending)
            pending = None
          with run_timer.timing('eval'):
            results = runner(ts.params, ts.state, workdir)
          writer.write(step_done, results)
          timer.restart(step_done)  # The evaluation is not input time.
    if pending is not None:
      consume(*pending)
      pending = None
    with run_timer.timing('checkpoint'):
      checkpointer.wait()
  finally:
    run_timer.end_steps()
    bar.close()
  train_time = time.time() - t0
  close_data = getattr(task.train_data, 'close', None)
  if close_data is not None:
    close_data()
  if preempted_at is not None:
    writer.close()
    checkpointer.close()
    error = preemption.Preempted(preempted_at, checkpointer.directory)
    _say(str(error))
    raise error

  if runner is not None:
    with run_timer.timing('eval'):
      eval_metrics = runner(ts.params, ts.state, workdir)
    # The final timings go with the final evaluation.
    writer.write(
      int(jax.device_get(ts.step)), {**eval_metrics, **run_timer.read()}
    )
    if eval_metrics:
      _say(
        'Held-out: '
        + ', '.join(f'{k[5:]} {v:.4f}' for k, v in sorted(eval_metrics.items()))
      )
  nonfinite = int(jax.device_get(ts.nonfinite_count))
  if nonfinite:
    _say(
      f'{nonfinite} update(s) had a non-finite loss or gradient and were '
      'skipped.'
    )
  steps_run = 0 if config.eval_only else config.total_steps - start_step
  steps_run = max(steps_run, 0)
  if steps_run:
    _say(
      f'Trained {steps_run} steps in {train_time:.1f}s '
      f'({steps_run / max(train_time, 1e-9):.2f} steps/s).'
    )
  if config.plot_curves:
    writer.plot()
  writer.close()
  checkpointer.close()
  if _is_chief():
    summary = {
      'step': int(jax.device_get(ts.step)),
      'train_time_s': train_time,
      **run_timer.read(),
      **eval_metrics,
    }
    with open(os.path.join(workdir, 'result.json'), 'w') as f:
      json.dump(summary, f, indent=2)
  return {
    'train_state': ts,
    'start_step': start_step,
    'losses': losses,
    'eval': eval_metrics,
    'nonfinite_count': nonfinite,
  }
