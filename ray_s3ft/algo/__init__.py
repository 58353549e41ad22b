"""Pure algorithm core: losses, GRPO advantages/loss, S3FT target selection, the SASR schedule.

Nothing here imports anything heavier than torch and numpy, so every role can use it and the
unit tests run in seconds. Import the submodules directly (``from ray_s3ft.algo import grpo``).
"""
