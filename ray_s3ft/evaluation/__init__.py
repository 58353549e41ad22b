"""Evaluation and reporting: ``ray-s3ft eval`` (``evaluate``), scoring answers and choices
(``scoring``), greedy generation with transformers (``generation``), lm-evaluation-harness tasks
(``lm_eval_suite``), and ``ray-s3ft report`` (``report``: the plots and summary of runs and
grids). Import the submodules directly."""
