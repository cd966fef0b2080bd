"""Stand-in: the real module registers the compiler's attention ops; here ``rebel/_ops.py`` does, at ``import rebel``."""
