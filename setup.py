"""Builds the optional C kernel of `parity diff` (metadata lives in pyproject.toml).

Without a C compiler the build still succeeds and the diff uses its numpy
kernel: the same numbers, a few times slower.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "parity.differ._kernel",
            sources=["differ/_kernel.c"],
            # No FMA contraction and no math-errno: results do not depend on
            # which of the AVX2 and SSE2 clones runs.
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-math-errno", "-Wno-psabi"],
            optional=True,
        )
    ]
)
