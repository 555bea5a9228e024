"""RL hyper-parameters in RL Baselines3 Zoo format, shipped as ``dp_gym.envs_configs.algos``."""
