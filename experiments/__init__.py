"""Experiments: one file per task with `get_config(arg)` and `build_task`.

Run any of them with
`python -m experiments.main --config=experiments/<task>.py[:variant] --workdir=DIR`.
"""
