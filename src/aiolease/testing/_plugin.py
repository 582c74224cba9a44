"""pytest plugin of aiolease.testing (registered through the ``pytest11`` entry point)."""
