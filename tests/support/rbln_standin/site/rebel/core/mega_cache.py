"""Stand-in for ``rebel.core.mega_cache``: the compiler's cache of compiled artifacts.

Replaces: the bundle reader/writer ``v1/worker/mega_cache.py:186,210`` calls.
Why: nothing is compiled here (the stand-in backend runs graphs eagerly), so
there is nothing to cache: reads find nothing and writes store nothing.
"""

_DIR = None


def set_dir(path):
    global _DIR
    _DIR = path


def read_bundle(src):
    return None


def write_bundle(dst):
    return 0
