"""Functions the task configs of this folder name (written by unitune)."""
from lm_eval.tasks.drop.utils import process_results as drop_results  # noqa: F401

from unitune.eval.benchmarks import hhh_both_orders  # noqa: F401
