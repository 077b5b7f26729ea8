"""imgvec's version, as installed: recorded in every output it writes."""

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("imgvec")
except PackageNotFoundError:  # running from a source tree
    VERSION = "0+unknown"
