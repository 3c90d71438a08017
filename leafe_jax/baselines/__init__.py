"""Baselines compared with LEAFE: GRPO-RLVR and Early Experience."""
