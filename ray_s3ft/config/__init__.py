"""The run configuration: ``load_config(path, overrides)`` is all a CLI needs.

``schema`` holds the typed, frozen sections and their defaults, ``load`` merges defaults, a
YAML file and dotted overrides with OmegaConf, and ``checks`` validates the result (single
values, then the rules that span sections). Every problem is a ``ConfigError`` naming the full
dotted key and what is allowed.
"""

from ray_s3ft.config.load import config_to_yaml, load_config, save_config, validate
from ray_s3ft.config.schema import (
    CHOICE_TARGETS,
    DIST_BACKENDS,
    DTYPES,
    ENGINES,
    GUARD_ACTIONS,
    LLM_JUDGE_MODES,
    LOGGERS,
    LOSS_AGGS,
    MATH_EXTRACT,
    MIX_DECAYS,
    MIX_TOKEN_WEIGHTS,
    OPTIMIZER_STATES,
    REFERENCES,
    SCHEDULE_KINDS,
    TARGET_KINDS,
    TASK_VERIFIERS,
    TASKS,
    VERIFIERS,
    WANDB_MODES,
    AlgorithmConfig,
    Config,
    ConfigError,
    DataConfig,
    EvalConfig,
    GRPOConfig,
    GuardConfig,
    JudgeConfig,
    LearnerConfig,
    LoraConfig,
    MixConfig,
    MlflowConfig,
    ModelConfig,
    ResourcesConfig,
    RolloutConfig,
    SASRConfig,
    ScheduleConfig,
    TrainerConfig,
    WandbConfig,
    resolved_judge,
)

__all__ = [
    "CHOICE_TARGETS", "DIST_BACKENDS", "DTYPES", "ENGINES", "GUARD_ACTIONS", "LLM_JUDGE_MODES",
    "LOGGERS", "LOSS_AGGS", "MATH_EXTRACT", "MIX_DECAYS", "MIX_TOKEN_WEIGHTS", "OPTIMIZER_STATES",
    "REFERENCES", "SCHEDULE_KINDS", "TARGET_KINDS", "TASKS", "TASK_VERIFIERS", "VERIFIERS",
    "WANDB_MODES", "AlgorithmConfig", "Config", "ConfigError", "DataConfig", "EvalConfig",
    "GRPOConfig", "GuardConfig", "JudgeConfig", "LearnerConfig", "LoraConfig", "MixConfig",
    "MlflowConfig", "ModelConfig", "ResourcesConfig", "RolloutConfig", "SASRConfig",
    "ScheduleConfig", "TrainerConfig", "WandbConfig", "config_to_yaml", "load_config",
    "resolved_judge", "save_config", "validate",
]  # fmt: skip
