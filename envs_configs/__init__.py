"""Environment presets (one YAML per registered id), shipped in the wheel as ``dp_gym.envs_configs``."""
