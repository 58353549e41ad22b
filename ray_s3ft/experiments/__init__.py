"""Experiments over runs: ``ray-s3ft compare`` (``compare``: a grid of methods x seeds on one
cluster; ``methods``: what each method overrides; ``results``: the grid's tables). Import the
submodules directly."""
