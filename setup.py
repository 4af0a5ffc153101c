"""Maps the five source folders onto the single import root ``vouch``.

``daemon/`` becomes ``vouch.daemon`` and so on, so ``import daemon`` never
works and every module has exactly one name. Everything else is in
pyproject.toml.
"""

from setuptools import find_packages, setup

ROOTS = ("core", "daemon", "probes", "rollout", "loadtests")

packages = []
for root in ROOTS:
    packages.append(f"vouch.{root}")
    packages.extend(f"vouch.{root}.{sub}" for sub in find_packages(root))

setup(
    packages=packages,
    package_dir={f"vouch.{root}": root for root in ROOTS},
    package_data={"": ["py.typed", "*.yaml", "*.json", "*.txt", "*.rego", "*.tmpl"]},
)
