"""Stand-in for ``rebel.core``: the compiler's torch.compile backend and its compile cache."""
