"""Where the shipped default models live (``operators/assets``), for every operator family."""

import os

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")


def asset_path(*parts: str) -> str:
    """Returns the path of a shipped asset, e.g. ``asset_path("semantic_audio")``."""
    return os.path.join(ASSETS_DIR, *parts)
