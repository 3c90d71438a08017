"""Training: one loop shared by every trainer (BC, Stage-2 SFT, GRPO later)."""
