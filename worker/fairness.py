"""Many tenants on one queue: the order of a model's RQ queue, and each tenant's limits.

Workers pop the head of their model's RQ list, as RQ does; fairness lives in *where a job is
put* in that list. Each job gets a virtual start tag (start-time fair queueing): a tenant's
next job starts where its previous one finished, but never before the queue's current virtual
time, and a job costs its work (samples x network evaluations) divided by the tenant's weight.
The list is kept in tag order, so a tenant that queued 200 jobs does not delay another
tenant's first job by more than the jobs already tagged before it (about one job per active
tenant). Because the order is RQ's own list, `rq info`, rq-dashboard and KEDA's list-length
trigger keep seeing every job that can run.

A tenant at its running limit (samples of that model running at once) has its next job
*parked* by `start`: out of the RQ list into the tenant's parked list, until one of its running
jobs leaves and puts back as many parked jobs as it freed samples (at the current virtual time,
so near the front). Parked jobs cannot run anyway, so the autoscaler is right not to count them.

Every key here is written only inside ledger transitions (worker.ledger) and these scripts.
"""

from __future__ import annotations

from .jobs import PREFIX


def order_key(model: str) -> str:
    """Sorted set: waiting job id -> virtual start tag (the RQ list is kept in this order)."""
    return f"{PREFIX}:fair:{model}"


def clock_key(model: str) -> str:
    """Hash: tenant -> virtual finish tag of its latest job; field '~now' = the queue's virtual time."""
    return f"{PREFIX}:fair:{model}:clock"


def parked_key(model: str, tenant: str) -> str:
    """List of the tenant's jobs of this model waiting for its running limit, oldest first."""
    return f"{PREFIX}:parked:{model}:{tenant}"


def running_key(model: str, tenant: str) -> str:
    """Hash: job id -> samples, of the tenant's running jobs of this model."""
    return f"{PREFIX}:running:{model}:{tenant}"


def waiting_key(tenant: str) -> str:
    """Sorted set: the tenant's waiting jobs (all models) -> when their record expires (the
    tenant's queue limit counts them; an entry outliving its record is pruned by time)."""
    return f"{PREFIX}:tenant:{tenant}:waiting"


def reserved_key() -> str:
    """Bytes reserved in Redis for the results of accepted, unfinished jobs (memory admission):
    the sum of reserved_jobs_key's amounts."""
    return f"{PREFIX}:reserved"


def reserved_jobs_key() -> str:
    """Sorted set: each reservation's job -> when its record expires. A job whose record expires
    unfinished (no worker came for its model) is pruned by time, and its bytes given back, so a
    reservation can never outlive its job."""
    return f"{PREFIX}:reserved:jobs"


def reserved_bytes_key() -> str:
    """Hash: each reservation's job -> its bytes."""
    return f"{PREFIX}:reserved:bytes"


# Lua: put `job`, already tagged in the order set, into the RQ list before the first job with a
# later tag that is in the list (popped ones are not), else last: equal tags keep arrival order.
PLACE = """
local function place(order, list, job)
  local tag = redis.call('zscore', order, job)
  local after = redis.call('zrangebyscore', order, '(' .. tag, '+inf', 'LIMIT', 0, 16)
  for _, other in ipairs(after) do
    if redis.call('linsert', list, 'BEFORE', other, job) > 0 then return end
  end
  redis.call('rpush', list, job)
end
"""

# KEYS: order, clock. ARGV: job id. A job leaves the order when a worker starts it; the queue's
# virtual time moves to its tag (never back). Returns 1.
ADVANCE = """
local tag = redis.call('zscore', KEYS[1], ARGV[1])
if tag then
  redis.call('zrem', KEYS[1], ARGV[1])
  local now = tonumber(redis.call('hget', KEYS[2], '~now') or '0')
  if tonumber(tag) > now then redis.call('hset', KEYS[2], '~now', tag) end
end
return 1
"""

# Lua: give back the reservations whose jobs' records have expired (KEYS total, jobs, bytes).
PRUNE_RESERVED = """
local function prune_reserved(total, members, amounts, now)
  for _, job in ipairs(redis.call('zrangebyscore', members, '-inf', now, 'LIMIT', 0, 100)) do
    redis.call('decrby', total, tonumber(redis.call('hget', amounts, job) or '0'))
    redis.call('hdel', amounts, job)
    redis.call('zrem', members, job)
  end
end
"""

# KEYS: reserved total, reserved jobs, reserved bytes. ARGV: job id. The job is final: its
# reservation (if it still has one) is given back, once. Returns the bytes given back.
RELEASE = """
if redis.call('zrem', KEYS[2], ARGV[1]) == 0 then return 0 end
local bytes = tonumber(redis.call('hget', KEYS[3], ARGV[1]) or '0')
redis.call('hdel', KEYS[3], ARGV[1])
redis.call('decrby', KEYS[1], bytes)
return bytes
"""

# KEYS: order, clock, RQ list, parked list. ARGV: how many to put back. Parked jobs return to the
# RQ list at the queue's virtual time (their turn has come). Returns how many were put back.
UNPARK = PLACE + """
local now = redis.call('hget', KEYS[2], '~now') or '0'
local n = 0
for _ = 1, tonumber(ARGV[1]) do
  local job = redis.call('lpop', KEYS[4])
  if not job then break end
  redis.call('zadd', KEYS[1], now, job)
  place(KEYS[1], KEYS[3], job)
  n = n + 1
end
return n
"""

# KEYS: order, clock. ARGV: job id. A job put back at the front of the RQ list (a lost worker, a
# shutdown) is tagged before every waiting job, so the order agrees with the list. Returns 1.
FRONT = """
local head = redis.call('zrange', KEYS[1], 0, 0, 'WITHSCORES')
local tag = tonumber(redis.call('hget', KEYS[2], '~now') or '0')
if head[2] and tonumber(head[2]) < tag then tag = tonumber(head[2]) end
redis.call('zadd', KEYS[1], tag - 1, ARGV[1])
return 1
"""

# Admission and enqueue of a new job, all or nothing, in one script: the queue and tenant limits
# and the memory check see every earlier create (no window between check and write).
# KEYS: 1 record, 2 image, 3 mask, 4 idempotency key, 5 RQ job hash, 6 RQ queues set,
#       7 RQ queue list, 8 order, 9 clock, 10 tenant waiting, 11 reserved total,
#       12 reserved jobs, 13 reserved bytes per job
# ARGV: 1 job id, 2 tenant, 3 image bytes, 4 mask bytes, 5 input ttl, 6 keep ttl,
#       7 idempotency fingerprint ('' = none), 8 idempotency ttl, 9 queue limit, 10 tenant limit,
#       11 admit fraction of maxmemory, 12 bytes stored now, 13 bytes to reserve, 14 cost (virtual),
#       15 now (unix s), 16 RQ queue key, 17 record pairs n, 18 RQ job pairs m, 19.. the pairs
# Returns {'ok', id} | {'replay', id} | {'conflict'} | {'queue_full', n} | {'tenant_full', n} |
#         {'memory', used, reserved, limit}
CREATE = PLACE + PRUNE_RESERVED + """
local job = ARGV[1]
if redis.call('exists', KEYS[1]) == 1 then return {'ok', job} end
if ARGV[7] ~= '' then
  local raw = redis.call('get', KEYS[4])
  if raw then
    local stored = cjson.decode(raw)
    if stored['fingerprint'] ~= ARGV[7] then return {'conflict'} end
    return {'replay', stored['job_id']}
  end
end
local queued = redis.call('llen', KEYS[7])
if queued >= tonumber(ARGV[9]) then return {'queue_full', tostring(queued)} end
redis.call('zremrangebyscore', KEYS[10], '-inf', ARGV[15])
local waiting = redis.call('zcard', KEYS[10])
if waiting >= tonumber(ARGV[10]) then return {'tenant_full', tostring(waiting)} end
local info = redis.call('info', 'memory')
local maxmemory = tonumber(string.match(info, 'maxmemory:(%d+)'))
prune_reserved(KEYS[11], KEYS[12], KEYS[13], ARGV[15])
if maxmemory > 0 then
  local used = tonumber(string.match(info, 'used_memory:(%d+)'))
  local reserved = tonumber(redis.call('get', KEYS[11]) or '0')
  local limit = maxmemory * tonumber(ARGV[11])
  if used + reserved + tonumber(ARGV[12]) + tonumber(ARGV[13]) > limit then
    return {'memory', tostring(used), tostring(reserved), tostring(math.floor(limit))}
  end
end
local n, m = tonumber(ARGV[17]), tonumber(ARGV[18])
redis.call('set', KEYS[2], ARGV[3], 'EX', ARGV[5])
redis.call('set', KEYS[3], ARGV[4], 'EX', ARGV[5])
redis.call('hset', KEYS[1], unpack(ARGV, 19, 18 + 2 * n))
redis.call('expire', KEYS[1], ARGV[6])
redis.call('hset', KEYS[5], unpack(ARGV, 19 + 2 * n, 18 + 2 * n + 2 * m))
redis.call('expire', KEYS[5], ARGV[6])
redis.call('sadd', KEYS[6], ARGV[16])
local now = tonumber(redis.call('hget', KEYS[9], '~now') or '0')
local start = tonumber(redis.call('hget', KEYS[9], ARGV[2]) or '0')
if start < now then start = now end
redis.call('hset', KEYS[9], ARGV[2], start + tonumber(ARGV[14]))
redis.call('zadd', KEYS[8], start, job)
place(KEYS[8], KEYS[7], job)
redis.call('zadd', KEYS[10], tonumber(ARGV[15]) + tonumber(ARGV[6]), job)
redis.call('incrby', KEYS[11], ARGV[13])
redis.call('zadd', KEYS[12], tonumber(ARGV[15]) + tonumber(ARGV[6]), job)
redis.call('hset', KEYS[13], job, ARGV[13])
if ARGV[7] ~= '' then
  redis.call('set', KEYS[4], cjson.encode({job_id = job, fingerprint = ARGV[7]}), 'EX', ARGV[8])
end
return {'ok', job}
"""
