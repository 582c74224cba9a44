"""Pointing at the user's code: where a pool was made, and warnings about it."""

from __future__ import annotations

import inspect
import os
import sys
import warnings

__all__ = ["user_location", "warn_at_user"]

# Files of the aiolease package: every frame in them is ours.
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _outside_frames() -> int:
    """How many frames up from our caller's caller the first frame outside aiolease is."""
    here = inspect.currentframe()  # this function's frame
    frame = None if here is None or here.f_back is None else here.f_back.f_back
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    return level


def user_location() -> str:
    """``file:line`` of the innermost caller outside aiolease (where a pool was made)."""
    here = inspect.currentframe()
    if here is None or here.f_back is None:  # an interpreter without frame support
        return "<unknown>"
    frame = here.f_back
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def warn_at_user(message: str, category: type[Warning], *, source: object = None) -> None:
    """``warnings.warn`` attributed to the innermost caller outside aiolease."""
    if sys.version_info >= (3, 12):
        warnings.warn(message, category, source=source, skip_file_prefixes=(_PACKAGE,))
    else:
        warnings.warn(message, category, stacklevel=_outside_frames() + 1, source=source)
