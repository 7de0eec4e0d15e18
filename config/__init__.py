"""streamrank's configuration: typed sections composed by one root, :class:`Settings`, below
every other package (see :mod:`config.settings`)."""

from config.settings import (
    HOUR_MS,
    MINUTE_MS,
    REPO_ROOT,
    FeatureSettings,
    JobSettings,
    KafkaSettings,
    ScorerSettings,
    Settings,
    StackSettings,
    TrainerSettings,
    load_settings,
    settings_env,
)

__all__ = ["HOUR_MS", "MINUTE_MS", "REPO_ROOT", "FeatureSettings", "JobSettings",
           "KafkaSettings", "ScorerSettings", "Settings", "StackSettings", "TrainerSettings",
           "load_settings", "settings_env"]
