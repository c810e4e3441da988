"""A UsageStore on Redis: a Lua script per check-and-change, expiry by cleanup(now), no TTLs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import redis.asyncio
from redis.typing import EncodableT

from datadl.adapters.redis._client import RedisAdapter
from datadl.domain.errors import Conflict
from datadl.domain.quotas import Reservation, ReserveOutcome, Usage
from datadl.ports.usage import CleanupCounts, TokenUse

_MICROSECOND = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Every script gets the keys it reads and writes in KEYS, except where a key's name is
# only known from stored data (settle, cleanup): those build it from the prefix.
# Times are integer microseconds, which Lua's doubles hold exactly until the year 2255.

_FORMAT = "local function fmt(n) return string.format('%.0f', n) end\n"

# KEYS: state, rate index. ARGV: expected given ('1'/'0'), expected, new, expires, name.
_COMPARE_AND_SET_TAT = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
return 1
"""

# KEYS: reservation, reservation index, counter index, then one counter per charge.
# ARGV: id, bytes, downloads, expires, then per charge: name, bytes cap, downloads cap
# ('' for no cap) and window end.
_RESERVE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {-1} end
local nbytes, ndownloads = tonumber(ARGV[2]), tonumber(ARGV[3])
local n = #KEYS - 3
local held = {}
for i = 1, n do
  local usage = redis.call('HMGET', KEYS[i + 3], 'b', 'd')
  held[i] = {usage[1] or '0', usage[2] or '0'}
end
for i = 1, n do
  local bcap, dcap = ARGV[4 * i + 2], ARGV[4 * i + 3]
  if (bcap ~= '' and tonumber(held[i][1]) + nbytes > tonumber(bcap))
      or (dcap ~= '' and tonumber(held[i][2]) + ndownloads > tonumber(dcap)) then
    return {i, held[i][1], held[i][2]}
  end
end
local fields = {'b', ARGV[2], 'd', ARGV[3]}
for i = 1, n do
  local counter, name, ends = KEYS[i + 3], ARGV[4 * i + 1], ARGV[4 * i + 4]
  redis.call('HINCRBY', counter, 'b', ARGV[2])
  redis.call('HINCRBY', counter, 'd', ARGV[3])
  local known = redis.call('ZSCORE', KEYS[3], name)
  if not known or tonumber(known) < tonumber(ends) then
    redis.call('ZADD', KEYS[3], ends, name)
  end
  fields[#fields + 1] = 'k' .. i
  fields[#fields + 1] = counter
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return {0}
"""

# KEYS: reservation, reservation index. ARGV: id, bytes sent.
_SETTLE = (
    _FORMAT
    + """
local stored = redis.call('HGETALL', KEYS[1])
if #stored == 0 then return 0 end
local sent = tonumber(ARGV[2])
if sent < 0 then return -1 end
local r = {}
for i = 1, #stored, 2 do r[stored[i]] = stored[i + 1] end
local reserved, downloads = tonumber(r['b']), tonumber(r['d'])
local kept = 0
if sent > 0 then kept = downloads end
local i = 1
while r['k' .. i] do
  local counter = r['k' .. i]
  if redis.call('EXISTS', counter) == 1 then
    redis.call('HINCRBY', counter, 'b', fmt(sent - reserved))
    redis.call('HINCRBY', counter, 'd', fmt(kept - downloads))
  end
  i = i + 1
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""
)

# KEYS: token uses, token sessions, token index, token-session index.
# ARGV: token id, session key, max uses ('' for none), now, idle, token expiry.
_USE_TOKEN = (
    _FORMAT
    + """
local now, idle, expires = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local member = string.len(ARGV[1]) .. ':' .. ARGV[1] .. ARGV[2]
local function see(last)
  redis.call('HSET', KEYS[2], ARGV[2], fmt(last))
  redis.call('ZADD', KEYS[4], fmt(last + idle), member)
end
local function extend()
  local known = redis.call('ZSCORE', KEYS[3], ARGV[1])
  if not known or tonumber(known) < expires then
    redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1])
  end
end
local uses = redis.call('GET', KEYS[1])
if uses then
  local last = redis.call('HGET', KEYS[2], ARGV[2])
  if last and now - tonumber(last) <= idle then
    see(math.max(tonumber(last), now))
    extend()
    return {1, tonumber(uses), 0}
  end
end
uses = tonumber(uses or '0')
if ARGV[3] ~= '' and uses >= tonumber(ARGV[3]) then return {0, uses, 0} end
redis.call('INCR', KEYS[1])
see(now)
extend()
return {1, uses + 1, 1}
"""
)

# KEYS: session, session index. ARGV: name, now, idle.
_TOUCH_SESSION = (
    _FORMAT
    + """
local now, idle = tonumber(ARGV[2]), tonumber(ARGV[3])
local last = redis.call('GET', KEYS[1])
local opened = 1
if last and now - tonumber(last) <= idle then
  now = math.max(tonumber(last), now)
  opened = 0
end
redis.call('SET', KEYS[1], fmt(now))
redis.call('ZADD', KEYS[2], fmt(now + idle), ARGV[1])
return opened
"""
)

# KEYS: revocations. ARGV: token id, expiry.
_REVOKE = """
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not known or tonumber(known) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
return 1
"""

# KEYS: the indexes of reservations, counters, tokens, token sessions, revocations,
# sessions and rate states. ARGV: prefix, now, now in epoch seconds, batch size.
# Returns how many of each went, and 1 when a batch was full and more may be due.
_CLEANUP = """
local prefix, now, limit = ARGV[1], ARGV[2], tonumber(ARGV[4])
local more = 0
local function due(index, upto)
  local members = redis.call('ZRANGEBYSCORE', index, '-inf', upto, 'LIMIT', 0, limit)
  if #members == limit then more = 1 end
  return members
end
local function drop(index, kind, upto)
  local members = due(index, upto)
  for _, name in ipairs(members) do
    redis.call('DEL', prefix .. kind .. name)
    redis.call('ZREM', index, name)
  end
  return #members
end
local reservations = drop(KEYS[1], 'reservation:', now)
local counters = drop(KEYS[2], 'counter:', now)
local sessions = 0
local tokens = due(KEYS[3], now)
for _, id in ipairs(tokens) do
  local held = prefix .. 'token-sessions:' .. id
  local keys = redis.call('HKEYS', held)
  for _, key in ipairs(keys) do
    redis.call('ZREM', KEYS[4], string.len(id) .. ':' .. id .. key)
  end
  sessions = sessions + #keys
  redis.call('DEL', prefix .. 'token:' .. id, held)
  redis.call('ZREM', KEYS[3], id)
end
for _, member in ipairs(due(KEYS[4], '(' .. now)) do
  local colon = string.find(member, ':', 1, true)
  local length = tonumber(string.sub(member, 1, colon - 1))
  local id = string.sub(member, colon + 1, colon + length)
  redis.call('HDEL', prefix .. 'token-sessions:' .. id, string.sub(member, colon + length + 1))
  redis.call('ZREM', KEYS[4], member)
  sessions = sessions + 1
end
local revoked = due(KEYS[5], now)
for _, id in ipairs(revoked) do redis.call('ZREM', KEYS[5], id) end
sessions = sessions + drop(KEYS[6], 'session:', '(' .. now)
local rates = drop(KEYS[7], 'rate:', ARGV[3])
return {reservations, counters, #tokens, #revoked, sessions, rates, more}
"""


def _micros(moment: datetime) -> int:
    # Exact integer arithmetic: a float timestamp would blur the microsecond boundaries
    # the memory store compares exactly. Naive times are local, as ``timestamp()`` has it.
    if moment.utcoffset() is None:
        moment = moment.astimezone()
    return (moment - _EPOCH) // _MICROSECOND


def _idle_micros(idle_seconds: float) -> int:
    if idle_seconds < 0:
        raise ValueError("idle_seconds must not be negative")
    # timedelta rounds to the microsecond exactly as the memory store's comparison does.
    return timedelta(seconds=idle_seconds) // _MICROSECOND


def _float_arg(value: float) -> str:
    # repr round-trips every float; adding 0.0 folds -0.0 into 0.0, which compares equal.
    return repr(float(value) + 0.0)


def _cap(limit: int | None) -> str:
    return "" if limit is None else str(limit)


class RedisUsageStore(RedisAdapter):
    """The UsageStore port on Redis, shared by every worker that uses the same prefix.

    Each check-and-change is one Lua script, which Redis runs without interleaving
    anything else, so the answers match ``MemoryUsageStore`` step for step. Under the
    prefix: ``rate:<key>`` (TAT), ``counter:<key>`` (hash of bytes and downloads),
    ``reservation:<id>`` (hash of the amounts and its counters' keys), ``token:<id>``
    (sessions opened), ``token-sessions:<id>`` (hash of session to last request),
    ``session:<key>`` (last request), and sorted sets ``index:*`` and ``revocations``
    scored by expiry: microseconds since the epoch, except rate states, which keep the
    caller's epoch seconds.

    Keys get no Redis TTL. The port's expiry is judged against the times callers pass
    in (a fake clock in tests, possibly far from Redis's own), and a key Redis expired
    early, or kept past ``cleanup``, would make the store disagree with the port. So
    ``cleanup(now)`` removes exactly what is due, walking the indexes in batches of
    ``cleanup_batch`` per kind, each batch one script. Run the cleanup job regularly,
    as for the SQL store, or the keys stay. Byte and download amounts are compared in
    Lua's doubles: exact up to 2**53. Scripts reach keys named by stored data, so this
    needs one Redis server (with replicas if wanted), not Redis Cluster.
    """

    def __init__(
        self, client: redis.asyncio.Redis, *, prefix: str = "datadl:", cleanup_batch: int = 500
    ) -> None:
        super().__init__(client, prefix=prefix)
        if cleanup_batch < 1:
            raise ValueError("cleanup_batch must be at least 1")
        self._cleanup_batch = cleanup_batch
        self._rate_index = f"{prefix}index:rates"
        self._reservation_index = f"{prefix}index:reservations"
        self._counter_index = f"{prefix}index:counters"
        self._token_index = f"{prefix}index:tokens"
        self._token_session_index = f"{prefix}index:token-sessions"
        self._session_index = f"{prefix}index:sessions"
        self._revocations = f"{prefix}revocations"
        self._compare_and_set_tat = client.register_script(_COMPARE_AND_SET_TAT)
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._use_token = client.register_script(_USE_TOKEN)
        self._touch_session = client.register_script(_TOUCH_SESSION)
        self._revoke = client.register_script(_REVOKE)
        self._cleanup = client.register_script(_CLEANUP)

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}{kind}:{name}"

    # rate limits

    async def get_tat(self, key: str) -> float | None:
        with self._translated("get_tat"):
            value = await self._client.get(self._key("rate", key))
        return None if value is None else float(value)

    async def compare_and_set_tat(
        self, key: str, expected: float | None, new: float, *, expires_at: float
    ) -> bool:
        if expected is not None and math.isnan(expected):
            # NaN equals nothing, the memory store's stored NaN included.
            return False
        # A NaN expiry is never reached, like an infinite one; Redis refuses NaN scores.
        expiry = math.inf if math.isnan(expires_at) else expires_at
        args = [
            "0" if expected is None else "1",
            "" if expected is None else _float_arg(expected),
            _float_arg(new),
            _float_arg(expiry),
            key,
        ]
        with self._translated("compare_and_set_tat"):
            result = await self._compare_and_set_tat(
                keys=[self._key("rate", key), self._rate_index], args=args
            )
        return bool(result)

    # quotas

    async def reserve(self, reservation: Reservation) -> ReserveOutcome:
        keys = [
            self._key("reservation", reservation.id),
            self._reservation_index,
            self._counter_index,
        ]
        args: list[EncodableT] = [
            reservation.id,
            reservation.bytes,
            reservation.downloads,
            _micros(reservation.expires_at),
        ]
        for charge in reservation.charges:
            keys.append(self._key("counter", charge.key))
            args += [
                charge.key,
                _cap(charge.bytes_limit),
                _cap(charge.downloads_limit),
                _micros(charge.window_end),
            ]
        with self._translated("reserve"):
            result = await self._reserve(keys=keys, args=args)
        refused = int(result[0])
        if refused < 0:
            raise Conflict(f"A reservation with id {reservation.id!r} exists.")
        if refused == 0:
            return ReserveOutcome.accepted()
        usage = Usage(bytes=int(result[1]), downloads=int(result[2]))
        return ReserveOutcome.refused_by(reservation.charges[refused - 1], usage)

    async def settle(self, reservation_id: str, bytes_sent: int) -> bool:
        with self._translated("settle"):
            result = int(
                await self._settle(
                    keys=[self._key("reservation", reservation_id), self._reservation_index],
                    args=[reservation_id, bytes_sent],
                )
            )
        if result < 0:
            raise ValueError("bytes_sent must not be negative")
        return result == 1

    async def usage(self, keys: Sequence[str]) -> Sequence[Usage]:
        if not keys:
            return []
        with self._translated("usage"):
            # MULTI/EXEC: every counter is read at the same instant, as under one lock.
            async with self._client.pipeline(transaction=True) as pipe:
                for key in keys:
                    pipe.hmget(self._key("counter", key), ["b", "d"])
                rows = await pipe.execute()
        return [Usage(bytes=int(b or 0), downloads=int(d or 0)) for b, d in rows]

    # tokens and sessions

    async def use_token(
        self,
        token_id: str,
        session_key: str,
        *,
        max_uses: int | None,
        now: datetime,
        idle_seconds: float,
        expires_at: datetime,
    ) -> TokenUse:
        idle = _idle_micros(idle_seconds)
        keys = [
            self._key("token", token_id),
            self._key("token-sessions", token_id),
            self._token_index,
            self._token_session_index,
        ]
        args: list[EncodableT] = [
            token_id,
            session_key,
            _cap(max_uses),
            _micros(now),
            idle,
            _micros(expires_at),
        ]
        with self._translated("use_token"):
            allowed, uses, new_session = await self._use_token(keys=keys, args=args)
        return TokenUse(allowed=bool(allowed), uses=int(uses), new_session=bool(new_session))

    async def touch_session(self, session_key: str, *, now: datetime, idle_seconds: float) -> bool:
        idle = _idle_micros(idle_seconds)
        with self._translated("touch_session"):
            opened = await self._touch_session(
                keys=[self._key("session", session_key), self._session_index],
                args=[session_key, _micros(now), idle],
            )
        return bool(opened)

    async def revoke_token(self, token_id: str, *, expires_at: datetime) -> None:
        with self._translated("revoke_token"):
            await self._revoke(keys=[self._revocations], args=[token_id, _micros(expires_at)])

    async def is_revoked(self, token_id: str) -> bool:
        with self._translated("is_revoked"):
            score = await self._client.zscore(self._revocations, token_id)
        return score is not None

    # cleanup

    async def cleanup(self, now: datetime) -> CleanupCounts:
        keys = [
            self._reservation_index,
            self._counter_index,
            self._token_index,
            self._token_session_index,
            self._revocations,
            self._session_index,
            self._rate_index,
        ]
        args: list[EncodableT] = [
            self._prefix,
            _micros(now),
            _float_arg(now.timestamp()),
            self._cleanup_batch,
        ]
        totals = [0] * 6
        more = True
        while more:
            # One batch per script call, so a large backlog never blocks Redis for long.
            with self._translated("cleanup"):
                *counts, full = await self._cleanup(keys=keys, args=args)
            totals = [total + int(count) for total, count in zip(totals, counts, strict=True)]
            more = bool(full)
        reservations, counters, token_uses, revocations, sessions, rate_states = totals
        return CleanupCounts(
            reservations=reservations,
            counters=counters,
            token_uses=token_uses,
            revocations=revocations,
            sessions=sessions,
            rate_states=rate_states,
        )
