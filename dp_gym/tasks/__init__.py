"""Tasks: what is fine-tuned on what (model, private data, public evaluation, loss)."""

from dp_gym.tasks.base import Task, create_task, register_task, registered_tasks, resolve_task
from dp_gym.tasks.text import TextTask, perplexity
from dp_gym.tasks.vision import VisionLanguageTask

__all__ = ["Task", "TextTask", "VisionLanguageTask", "create_task", "perplexity", "register_task", "registered_tasks", "resolve_task"]
