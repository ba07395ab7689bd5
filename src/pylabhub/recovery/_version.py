"""Single source of the pylabhub.recovery version (galaxy.yml must match)."""

__version__ = "0.1.0"
