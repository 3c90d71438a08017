"""Datasets: TFDS builders (SFT examples, level sets), store, grain loader."""
