"""Stand-in for ``rebel.ops``: the package that registers the compiler's torch ops (see ``rebel/_ops.py``)."""
