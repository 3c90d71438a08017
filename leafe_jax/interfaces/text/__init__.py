"""Language-model agents acting through text (``format``: verl-agent's Sokoban format;
``agent``: the text Sokoban agent interface; ``policy``: a pretrained model as its policy)."""
