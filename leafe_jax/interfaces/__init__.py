"""Agent interfaces: the seam (``protocol``) and its implementations (``symbolic``)."""
