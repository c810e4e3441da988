"""What the Redis adapters share: client ownership, key prefixes and error translation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Self

import redis.asyncio
import redis.exceptions as rx
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from datadl.domain.errors import PortError, Unavailable


class RedisDataError(PortError):
    """Redis refused a command in a way that retrying will not fix.

    Keys under the adapter's prefix hold values of a type datadl never writes there, or a
    script failed: both are bugs or a prefix shared with another program, not an outage.
    """

    title = "Redis refused the operation"
    default_hint = "Give datadl a key prefix of its own and report the error with its message."


# Replies of a Redis that is alive but cannot serve for a while: loading its data after
# a restart, a failover (read-only replica, master down), or a resharding.
_TRANSIENT_ERRORS = (rx.BusyLoadingError, rx.ReadOnlyError, rx.TryAgainError, rx.ClusterDownError)


class RedisAdapter:
    """A Redis client, the prefix that namespaces every key, and how failures read.

    A client handed to the constructor stays the caller's: ``aclose`` leaves it open.
    One made by ``from_url`` belongs to the adapter, which closes it. The client must
    return bytes (``decode_responses=False``, redis-py's default), and had better draw
    on a ``BlockingConnectionPool``: the default pool fails once 100 commands are in
    flight, where this one waits for a free connection.
    """

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str = "datadl:") -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("the Redis client must return bytes: drop decode_responses")
        self._client = client
        self._prefix = prefix
        self._owns_client = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "datadl:",
        socket_timeout: float = 5.0,
        max_connections: int = 64,
    ) -> Self:
        """An adapter on a client of its own for ``url`` (``redis://host:6379/0``).

        Connecting, each command, and waiting for one of the ``max_connections`` pooled
        connections give up after ``socket_timeout`` seconds. The client never retries
        by itself: a script whose reply was lost may have run, and running it again
        would count a reservation or a token use twice.
        """
        # A blocking pool queues a burst of requests instead of failing past its size.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=socket_timeout,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        adapter = cls(redis.asyncio.Redis.from_pool(pool), prefix=prefix)
        adapter._owns_client = True
        return adapter

    async def aclose(self) -> None:
        """Close the client if this adapter made it; otherwise leave it to its owner."""
        if self._owns_client:
            await self._client.aclose()

    def _where(self) -> str:
        options: dict[str, Any] = self._client.connection_pool.connection_kwargs
        if options.get("path"):
            return f"unix://{options['path']}"
        return f"redis://{options.get('host', 'localhost')}:{options.get('port', 6379)}"

    def _busy(self, operation: str, error: Exception) -> Unavailable:
        return Unavailable(
            f"Redis at {self._where()} cannot serve {operation} now: {error}",
            hint="Redis is busy, loading or failing over; retry in a few seconds.",
        )

    @contextlib.contextmanager
    def _translated(self, operation: str) -> Iterator[None]:
        # Services only know port errors: nothing from redis-py or the socket gets past.
        try:
            yield
        except (rx.AuthenticationError, rx.AuthorizationError, rx.NoPermissionError) as error:
            raise Unavailable(
                f"Redis at {self._where()} refused {operation}: {error}",
                hint="Check the user name and password in the Redis URL and its ACL rules.",
            ) from error
        except _TRANSIENT_ERRORS as error:
            raise self._busy(operation, error) from error
        except rx.OutOfMemoryError as error:
            raise Unavailable(
                f"Redis at {self._where()} is out of memory during {operation}.",
                hint="Raise Redis's maxmemory, or run the usage cleanup job more often.",
            ) from error
        except (rx.ConnectionError, rx.TimeoutError, OSError) as error:
            raise Unavailable(
                f"Redis at {self._where()} could not be reached for {operation}: {error}",
                hint="Check that Redis is running and the URL is right, then retry.",
            ) from error
        except rx.ResponseError as error:
            # redis-py has no class for BUSY (a long script running), so it is in the text.
            if str(error).startswith("BUSY "):
                raise self._busy(operation, error) from error
            raise RedisDataError(f"Redis refused {operation}: {error}") from error
        except rx.RedisError as error:
            raise RedisDataError(f"Redis failed during {operation}: {error}") from error
