"""The packages of the wheel, beside pyproject.toml (which holds everything else).

The top-level conf/ is installed as the package vaelab.conf (each config group a subpackage), so
an installed vaelab carries its configs: vaelab.config.CONFIG_DIR finds them there when no source
tree lies beside the code. Found here rather than listed in pyproject.toml, so a new config
group or module folder needs no edit; tests/test_packaging.py checks the wheel.
"""

from setuptools import find_namespace_packages, find_packages, setup

groups = [f"vaelab.conf.{name}" for name in find_namespace_packages("conf")]
setup(
    package_dir={"": "src", "vaelab.conf": "conf"},
    packages=[*find_packages("src"), "vaelab.conf", *groups],
    package_data={"": ["*.yaml"]},
)
