"""What the tests share: a loopback Hub, the CLI as a subprocess, synthetic stores, the NPU stand-ins.

Imported as ``tests.support.<module>`` (pytest runs with the repository root on
``sys.path``: ``pythonpath`` in pyproject.toml).
"""
