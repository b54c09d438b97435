# Only the package list is here; everything else is in pyproject.toml. The default pricing tables stay
# at the repository's top level (pricing_tables/, edited by people and by `pricing build`) and are mapped
# into the wheel as the data package processor.pricing_tables, so an installed sidecar prices on its
# defaults without a source checkout.
from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["processor*"]), "processor.pricing_tables"],
    package_dir={"processor.pricing_tables": "pricing_tables"},
)
