"""Where cnnlab keeps files between runs: the user cache directory and its sub-folders.

    cache_dir()          $XDG_CACHE_HOME/cnnlab, default ~/.cache/cnnlab (downloaded datasets)
    native_cache_dir()   $CNNLAB_NATIVE_CACHE, default <cache_dir>/native (compiled C kernels)
    feature_cache_dir()  $CNNLAB_FEATURE_CACHE, default <cache_dir>/features (transfer features)

Where datasets are searched is `cnnlab.data.locate`'s business; it starts from `cache_dir()`.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """The user cache directory for cnnlab (`$XDG_CACHE_HOME/cnnlab` or `~/.cache/cnnlab`), joined with `parts`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "cnnlab", *parts)


def _override(env: str, default: Path) -> Path:
    value = os.environ.get(env)
    return Path(value).expanduser() if value else default


def native_cache_dir() -> Path:
    """Where compiled C kernels are kept: `$CNNLAB_NATIVE_CACHE`, else `<cache_dir>/native`."""
    return _override("CNNLAB_NATIVE_CACHE", cache_dir("native"))


def feature_cache_dir() -> Path:
    """Where transfer learning caches backbone features: `$CNNLAB_FEATURE_CACHE`, else `<cache_dir>/features`."""
    return _override("CNNLAB_FEATURE_CACHE", cache_dir("features"))
