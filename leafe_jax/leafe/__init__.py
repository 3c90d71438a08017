"""LEAFE itself: Stage-1 search (tree, explore), Stage-2 data (distill), rendering."""
