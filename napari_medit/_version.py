"""The installed distribution's version, for provenance and the files napari-medit writes.

Its own module so that any layer (the engine, the DICOM writers) can name it without importing the
package root above it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-medit")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"
