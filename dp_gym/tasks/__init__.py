"""Tasks: what is fine-tuned on what (model, private data, public evaluation, loss)."""

from dp_gym.tasks.base import (
    TASKS,
    SupportsPrivacyAttacks,
    SupportsTokenizer,
    Task,
    create_task,
    perplexity,
    register_task,
    registered_tasks,
    resolve_task,
)
from dp_gym.tasks.text import TextTask
from dp_gym.tasks.vision import VisionLanguageTask

__all__ = [
    "TASKS",
    "SupportsPrivacyAttacks",
    "SupportsTokenizer",
    "Task",
    "TextTask",
    "VisionLanguageTask",
    "create_task",
    "perplexity",
    "register_task",
    "registered_tasks",
    "resolve_task",
]
