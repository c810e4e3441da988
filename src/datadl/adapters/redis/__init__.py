"""Redis adapters for the hot counters and the cache (``pip install datadl[redis]``)."""

from datadl.adapters.redis._client import RedisDataError
from datadl.adapters.redis.cache import RedisCache
from datadl.adapters.redis.usage import RedisUsageStore

__all__ = ["RedisCache", "RedisDataError", "RedisUsageStore"]
