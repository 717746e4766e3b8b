"""Reinforcement learning for the R1 recipe: reward functions (``nanoseek.rl.rewards``) and GRPO.

Nothing is imported here, so ``import nanoseek.rl.rewards`` stays free of torch.
"""
