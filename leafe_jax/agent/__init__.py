"""The agent side: symbolic interaction encoding and the on-device rollout."""
