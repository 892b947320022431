"""Disk activation cache: computed once by a model forward, streamed back many times.

`format` (the manifest and its checks), `reader` (`open_cache`, memory-mapped streams) and `writer`
(`write_cache`, resumable) import in that order only, so there is no import cycle.
"""

from saekit.data.cache.format import (
                                      DTYPES,
                                      FORMAT_NAME,
                                      FORMAT_VERSION,
                                      MANIFEST_NAME,
                                      read_manifest,
                                      validate_manifest,
)
from saekit.data.cache.reader import ActivationCache, CacheStream, open_cache
from saekit.data.cache.writer import CacheWriter, cached_token_count, write_cache

__all__ = ["DTYPES", "FORMAT_NAME", "FORMAT_VERSION", "MANIFEST_NAME", "ActivationCache", "CacheStream",
           "CacheWriter", "cached_token_count", "open_cache", "read_manifest", "validate_manifest",
           "write_cache"]
