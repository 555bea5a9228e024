"""LoRA adapters through ``peft``, injected in place so the model keeps its own class.

``peft.inject_adapter_in_model`` adds ``lora_A`` / ``lora_B`` (``nn.Linear``) and ``lora_dropout``
(``nn.Dropout`` or identity) to every targeted layer and freezes everything else. Unlike
``get_peft_model`` it returns the model itself (a ``GPT2LMHeadModel`` stays one), so a task that
reaches into submodules (``llava.model.vision_tower``) works unchanged, and parameter names only gain
``.lora_A.default.weight`` suffixes (so ``per_block`` grouping still sees the blocks).

DP pitfalls guarded here (each tested in ``tests/models/test_real_architectures.py``):

* only adapter weights are trainable: after :func:`apply_lora` every other parameter has
  ``requires_grad=False``, and :func:`adapter_parameter_names` is what the engine groups;
* an adapter that silently never updates: peft's ``lora_B`` starts at zero, so ``lora_A``'s first
  gradient is exactly zero. That is correct, not a missing hook: ``A``'s per-sample gradient is
  ``B^T G_i^T x_i``; the test checks that every adapter weight moves within two DP steps and
  that no frozen weight ever does;
* ``lora_dropout`` must be per-example: :func:`check_per_example_dropout` refuses any dropout
  module other than elementwise ``nn.Dropout`` (an elementwise mask of one example touches that
  example's activations only, so the per-sample decomposition stays exact);
* the model must sit on its device before the engine wraps it (Opacus keeps references to the
  parameters it hooks): ``FineTuningRun`` moves the model the task built, then builds the updater.
"""

from __future__ import annotations

import warnings

from torch import nn

from dp_gym.models.spec import LoraSpec

ADAPTER_MARKERS = (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B.", ".lora_magnitude_vector.")


def apply_lora(model: nn.Module, spec: LoraSpec, field: str = "task_kwargs.model.lora",
               exclude: str | None = None) -> nn.Module:
    """Inject LoRA adapters into ``model`` in place and freeze every non-adapter weight.

    ``exclude``: a regex of module names never adapted (the vision task excludes its frozen
    vision tower, whose attention layers share the language model's ``q_proj``/``v_proj`` names).

    Raises:
        ImportError: when ``peft`` is not installed (one line naming the extra).
        ValueError: naming ``field.target_modules`` when no module matches.
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ImportError("LoRA needs peft: pip install 'dp-gym[lora]'") from None
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=list(spec.target_modules) if spec.target_modules else None, bias="none",
                        exclude_modules=exclude)
    if config.target_modules is None:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in defaults:
            raise ValueError(f"{field}.target_modules is required for model type {model_type!r} (peft has no default)")
        config.target_modules = set(defaults[model_type])
    try:
        with warnings.catch_warnings():
            # peft sets fan_in_fan_out for each GPT-2 Conv1D it adapts (the right thing) and warns
            warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
            model = inject_adapter_in_model(config, model)
    except ValueError as error:
        raise ValueError(f"{field}.target_modules {sorted(config.target_modules)} match no layer of the model: "
                         f"{str(error).splitlines()[0]}") from None
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(is_adapter_parameter(name))
    check_per_example_dropout(model)
    return model


def is_adapter_parameter(name: str) -> bool:
    return any(marker in f".{name}." for marker in ADAPTER_MARKERS)


def adapter_parameter_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters() if is_adapter_parameter(name)]


def check_per_example_dropout(model: nn.Module) -> None:
    """Refuse a LoRA dropout that could mix examples (anything but elementwise ``nn.Dropout``).

    Raises:
        ValueError: naming the module.
    """
    for name, module in model.named_modules():
        if name.endswith("lora_dropout"):
            for key, dropout in getattr(module, "items", lambda: [])():
                if type(dropout) not in (nn.Dropout, nn.Identity):
                    raise ValueError(f"{name}.{key} is {type(dropout).__name__}: LoRA dropout must be elementwise "
                                     "nn.Dropout so that each example's mask touches that example only")


__all__ = ["adapter_parameter_names", "apply_lora", "check_per_example_dropout", "is_adapter_parameter"]
