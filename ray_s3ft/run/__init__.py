"""One training run, driven from the controller process: the Ray cluster and actor groups
(``cluster``), the run session (``session``: preflight, engines, S3FT targets), the step loop
(``controller``) with its sampling, rewards and weight sync, checkpoints, metrics, and the
``train`` entry point. Import the submodules directly."""
