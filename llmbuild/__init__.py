"""llmbuild: a declarative build system for language models."""

__version__ = "0.1.0"
