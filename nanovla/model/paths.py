"""Where shipped assets live (no torch import, so a bundle-only runtime can use it)."""

import os

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # nanovla/, above model/


def default_model_dir() -> str:
    """The shipped default model, inside the package so an installed nanovla finds it."""
    return os.path.join(PACKAGE_DIR, "assets", "default_model")


def default_bundle_dir() -> str:
    """The shipped default model exported as an int8 bundle (scripts/export_default_bundle.sh)."""
    return os.path.join(PACKAGE_DIR, "assets", "default_bundle")


def sample_images_dir() -> str:
    return os.path.join(PACKAGE_DIR, "assets", "samples")
