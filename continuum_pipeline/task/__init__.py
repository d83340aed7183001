"""A task: what one model learns. Its configuration (the FlywheelComponent's YAML) and how it is loaded."""

from continuum_pipeline.task.config import TaskConfig, TaskConfigError, load_task_config

__all__ = ["TaskConfig", "TaskConfigError", "load_task_config"]
