"""Build dsv's optional C loops (dsv/_native.c). Everything else is in pyproject.toml.

`optional=True`: where no C compiler is at hand the install still succeeds, and dsv runs
the Python twins in dsv/native.py (same results, slower walks and reads)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("dsv._native", ["dsv/_native.c"], optional=True,
                             extra_compile_args=["-Wall", "-Wextra"])])
