"""Endcap's built-in plugins. Each registers through the ``endcap`` entry-point group exactly as a
third-party package does (see ``[project.entry-points.endcap]`` in pyproject.toml)."""
