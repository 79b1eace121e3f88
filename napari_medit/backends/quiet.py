"""Model loading without the libraries' chatter: napari-medit reports its own progress.

diffusers and transformers print progress bars ('Loading weights 0/36') and notices while
loading; a command line tool or a GUI status line should show only what napari-medit says.
Errors are still raised, and warnings at ERROR level still print.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_loading() -> Iterator[None]:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = (diffusers_logging, transformers_logging)
    before = [(lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in libraries]
    for lib in libraries:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, (verbosity, bars) in zip(libraries, before, strict=True):
            lib.set_verbosity(verbosity)
            if bars:
                lib.enable_progress_bar()
