"""Built-in backends of llmbuild, installed as ``llmbuild.backends``.

Each is registered through the ``llmbuild.backends`` entry point group, like any
third-party backend. See README.md in this folder for the file roles.
"""
