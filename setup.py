"""Only here because cffi's build hook cannot be declared in pyproject.toml yet."""

from setuptools import setup

setup(cffi_modules=["build_ffi.py:ffibuilder", "build_embed.py:embedbuilder"])
