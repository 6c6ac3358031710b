# The C engine is compiled by cffi in API mode at install time (see userspace/build_engine.py).
from setuptools import setup

setup(cffi_modules=["userspace/build_engine.py:ffibuilder"])
