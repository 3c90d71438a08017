"""The symbolic Sokoban agent: token encoding, on-device rollout, episodes, reflectors,
behaviour-cloning data and pretraining, and its ``interface`` implementation."""
