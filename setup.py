"""Package list for setuptools (the rest of the metadata is in pyproject.toml).

Why a setup.py: pyproject's declarative `packages.find` cannot also map the repository's `flows/` and `bento/`
folders to installable packages, and an explicit list would silently drop every new `mixllm` subpackage. The
mapped names are not generic (`flows`, `bento`) so they never clash with other installed distributions.
"""

from setuptools import find_packages, setup

MAPPED = {"mixllm_flows": "flows", "mixllm_bento": "bento"}

setup(packages=[*find_packages(include=["mixllm", "mixllm.*"]), *MAPPED], package_dir=MAPPED)
