"""Single source of the pylabhub.recovery version (galaxy.yml must match)."""

__version__ = "0.2.0"
