"""Lua scripts: every change of a job record is one atomic script.

A status change, the moves between status indexes, the matching event on
the job's stream and the expiry of its keys happen together or not at all,
so readers never see a job half-way between two states and two writers
(API cancelling, worker finishing) cannot interleave.

KEYS layout of every job script (see ``Keys.job_script_keys``): 1-4 the
job's hash, files hash, history list and event stream; 5-9 the status
indexes in ``JobStatus`` order; 10 the index of all jobs; 11+ extras.
ARGV layout: 1 retention in ms, 2 event stream cap, 3 job id, 4+ per script.
Times come from the Redis server clock (``TIME``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .records import JobStatus

_STATUS_TABLE = ", ".join(f"{status.value}=KEYS[{5 + i}]" for i, status in enumerate(JobStatus))

_PRELUDE = f"""
local JOB, FILES, HISTORY, EVENTS, ALL = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[10]
local INDEX = {{{_STATUS_TABLE}}}
local TTL_MS, MAXLEN, ID = tonumber(ARGV[1]), ARGV[2], ARGV[3]

local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function fmt(t) return string.format('%.6f', t) end

local function emit(kind, data)
  return redis.call('XADD', EVENTS, 'MAXLEN', '~', MAXLEN, '*', 'type', kind, 'data', data)
end

local function hset_json(key, json)
  for field, value in pairs(cjson.decode(json)) do redis.call('HSET', key, field, value) end
end

local function expire_all()
  for _, key in ipairs({{JOB, FILES, HISTORY, EVENTS}}) do redis.call('PEXPIRE', key, TTL_MS) end
end

-- A live (queued or running) job never expires: however long it waits or runs, retention
-- counts from its end (finish() sets the expiry).
local function persist_all()
  for _, key in ipairs({{JOB, FILES, HISTORY, EVENTS}}) do redis.call('PERSIST', key) end
end

local function move(from, to)
  local score = redis.call('ZSCORE', ALL, ID)
  redis.call('ZREM', INDEX[from], ID)
  redis.call('ZADD', INDEX[to], score, ID)
  redis.call('HSET', JOB, 'status', to)
end

-- A terminal state: retention counts from here. error: a table or nil.
local function finish(from, to, error)
  move(from, to)
  redis.call('HSET', JOB, 'finished_at', fmt(now()))
  if error then redis.call('HSET', JOB, 'error_code', error.code, 'error_message', error.message) end
  emit('status', cjson.encode({{status=to, error=error}}))
  expire_all()
end
"""

# Counts the jobs of an owner's queued set (KEYS-style names `candidates`, `queued`) that are
# still in the queued index; with `prune`, forgets the others (started, canceled, deleted),
# so that the set stays about as large as the per-owner cap.
_OWNER_QUEUED = """
local function owner_queued(candidates, queued, prune)
  local n = 0
  for _, id in ipairs(redis.call('ZRANGE', candidates, 0, -1)) do
    if redis.call('ZSCORE', queued, id) then
      n = n + 1
    elseif prune then
      redis.call('ZREM', candidates, id)
    end
  end
  return n
end
"""

# KEYS 11: the owner's job index, 12: the owner's queued set, 13: the lease index,
# 14: idempotency key (optional). ARGV 4: fields (JSON object of strings), 5: files (JSON
# object), 6: cap on queued jobs, 7: cap on the owner's queued jobs (0: no cap), 8: dispatch
# grace in seconds. The new job awaits the dispatch of its first message (dispatch id: the
# job id) until the caller confirms it sent: a caller that dies before leaves it to a reaper.
# Returns {"created", ID}, {"existing", id} (an idempotent retry: nothing written) or
# {"queue_full", "service" | "client", cap} (refused: nothing written).
_CREATE = _OWNER_QUEUED + """
local OWNER_JOBS, OWNER_QUEUED, LEASES, idem = KEYS[11], KEYS[12], KEYS[13], KEYS[14]
local max_queued, max_owner = tonumber(ARGV[6]), tonumber(ARGV[7])
if idem then
  local existing = redis.call('GET', idem)
  -- JOB is "<prefix>:job:<ID>": the earlier job's key differs only in its id.
  if existing and redis.call('EXISTS', string.sub(JOB, 1, #JOB - #ID) .. existing) == 1 then
    return {'existing', existing}
  end
end
if redis.call('EXISTS', JOB) == 1 then return redis.error_reply('job id already in use') end
if max_queued > 0 and redis.call('ZCARD', INDEX.queued) >= max_queued then
  return {'queue_full', 'service', max_queued}
end
if max_owner > 0 and owner_queued(OWNER_QUEUED, INDEX.queued, true) >= max_owner then
  return {'queue_full', 'client', max_owner}
end
local t = now()
hset_json(JOB, ARGV[4])
redis.call('HSET', JOB, 'id', ID, 'status', 'queued', 'created_at', fmt(t))
hset_json(FILES, ARGV[5])
redis.call('ZADD', ALL, t * 1000, ID)
redis.call('ZADD', INDEX.queued, t * 1000, ID)
redis.call('ZADD', OWNER_JOBS, t * 1000, ID)
redis.call('ZADD', OWNER_QUEUED, t * 1000, ID)
-- A job's keys expire a retention period after it ends, so (for runs shorter than
-- that) entries older than two periods name gone jobs; listing drops the others.
redis.call('ZREMRANGEBYSCORE', OWNER_JOBS, '-inf', '(' .. fmt(t * 1000 - 2 * TTL_MS))
redis.call('PEXPIRE', OWNER_JOBS, 2 * TTL_MS)
redis.call('PEXPIRE', OWNER_QUEUED, 2 * TTL_MS)
emit('status', cjson.encode({status='queued'}))
await_dispatch(LEASES, t, ID, ARGV[8])
if idem then
  redis.call('SET', idem, ID, 'PX', TTL_MS)
  redis.call('HSET', JOB, 'idempotency_key', idem)
end
return {'created', ID}
"""

# KEYS 1: the queued index, 2: an owner's queued set (read only).
# Returns {jobs queued, jobs of the owner queued}.
_QUEUED_COUNTS = _OWNER_QUEUED + """
return {redis.call('ZCARD', KEYS[1]), owner_queued(KEYS[2], KEYS[1], false)}
"""

# Returns "canceled" (was queued), "cancel_requested" (running: the worker stops it),
# the terminal status it already had, or "missing".
_CANCEL = """
local status = redis.call('HGET', JOB, 'status')
if not status then return 'missing' end
if status == 'queued' then
  redis.call('HSET', JOB, 'stop_reason', 'canceled')
  finish('queued', 'canceled', nil)
  return 'canceled'
end
if status == 'running' then
  redis.call('HSET', JOB, 'cancel_requested', '1')
  return 'cancel_requested'
end
return status
"""

# A running job is held by a lease: a token in its record (``lease_token``) and an expiry on
# the Redis clock, kept both in the record and in the lease index (a sorted set scored by
# expiry, where reapers look). The holder renews it; writes of a run check the token, so a
# worker that lost its lease (paused, cut off) can no longer change the job.
_LEASE = """
local function lease_live(t)
  return (tonumber(redis.call('HGET', JOB, 'lease_expires_at')) or 0) > t
end

local function holds(token)
  return redis.call('HGET', JOB, 'status') == 'running' and redis.call('HGET', JOB, 'lease_token') == token
end

local function hold(leases, t, lease_s)
  local expires = t + tonumber(lease_s)
  redis.call('HSET', JOB, 'lease_expires_at', fmt(expires))
  redis.call('ZADD', leases, expires, ID)
end

local function release(leases)
  redis.call('ZREM', leases, ID)
  redis.call('HDEL', JOB, 'lease_token', 'lease_expires_at', 'dispatch')
end

-- Queued, but nobody is sure its message was sent: a reaper sends it again after the
-- grace unless confirm_dispatch clears the entry first.
local function await_dispatch(leases, t, dispatch_id, grace_s)
  redis.call('HSET', JOB, 'dispatch', dispatch_id)
  redis.call('ZADD', leases, t + tonumber(grace_s), ID)
end
"""

# ARGV 4: worker name, 5: attempt cap, 6: message when the cap is passed, 7: lease token,
# 8: lease in seconds, 9: token of a live lease to take over ("": none). KEYS 11: the lease index.
# Returns {outcome, attempts, holder, holder token}: "claimed", "busy" (a live lease of another
# holder runs it), "gave_up" (now failed), "missing" or the status it had.
_CLAIM = """
local status = redis.call('HGET', JOB, 'status')
if not status then return {'missing', 0} end
if status ~= 'queued' and status ~= 'running' then return {status, 0} end
local t = now()
if status == 'running' then
  local holder = redis.call('HGET', JOB, 'lease_token') or ''
  if lease_live(t) and holder ~= ARGV[9] then
    return {'busy', tonumber(redis.call('HGET', JOB, 'attempts')) or 0, redis.call('HGET', JOB, 'worker') or '', holder}
  end
end
local attempts = redis.call('HINCRBY', JOB, 'attempts', 1)
if attempts > tonumber(ARGV[5]) then
  finish(status, 'failed', {code='worker_lost', message=ARGV[6]})
  release(KEYS[11])
  return {'gave_up', attempts}
end
if status == 'queued' then move('queued', 'running') end
if not redis.call('HGET', JOB, 'started_at') then redis.call('HSET', JOB, 'started_at', fmt(t)) end
redis.call('HSET', JOB, 'worker', ARGV[4], 'heartbeat_at', fmt(t), 'lease_token', ARGV[7])
redis.call('HDEL', JOB, 'dispatch')
persist_all()  -- records made with an expiry by an older version
hold(KEYS[11], t, ARGV[8])
emit('status', cjson.encode({status='running', attempt=attempts}))
return {'claimed', attempts}
"""

# ARGV 4: fields (JSON object), 5: progress event data (JSON) or "", 6: lease token.
# KEYS 11: the drain flag of the worker running it. Returns 0 if the job no longer runs
# under this lease, 2 if a cancel was requested, 3 if its worker is shutting down, else 1.
_PROGRESS = """
if not holds(ARGV[6]) then return 0 end
hset_json(JOB, ARGV[4])
redis.call('HSET', JOB, 'heartbeat_at', fmt(now()))
if ARGV[5] ~= '' then emit('progress', ARGV[5]) end
if redis.call('HGET', JOB, 'cancel_requested') == '1' then return 2 end
if redis.call('EXISTS', KEYS[11]) == 1 then return 3 end
return 1
"""

# ARGV 4: one history point (JSON), 5: lease token. Keys created after submission share the job's expiry (none while it is live).
# A point at or before the last one stored is already there: a retry after a reply lost to a timeout.
_APPEND_HISTORY = """
local ttl = redis.call('PTTL', JOB)
if ttl == -2 or not holds(ARGV[5]) then return 0 end
local last = redis.call('LINDEX', HISTORY, -1)
if last and cjson.decode(last).iteration >= cjson.decode(ARGV[4]).iteration then return 1 end
redis.call('RPUSH', HISTORY, ARGV[4])
if ttl > 0 then redis.call('PEXPIRE', HISTORY, ttl) end
return 1
"""

# ARGV 4: iteration, 5: lease token. Drops the points logged after it (a resumed run logs them again),
# and the snapshots after it, from the files and the event stream.
_REWIND_HISTORY = """
if not holds(ARGV[5]) then return -1 end
local keep = 0
for i, raw in ipairs(redis.call('LRANGE', HISTORY, 0, -1)) do
  if cjson.decode(raw).iteration > tonumber(ARGV[4]) then break end
  keep = i
end
if keep == 0 then redis.call('DEL', HISTORY) else redis.call('LTRIM', HISTORY, 0, keep - 1) end
-- The abandoned part's snapshots go too: from the files (the download allowlist) and the stream.
local after = tonumber(ARGV[4])
for _, name in ipairs(redis.call('HKEYS', FILES)) do
  local n = string.match(name, '^snapshot_(%d+)%.png$')
  if n and tonumber(n) > after then redis.call('HDEL', FILES, name) end
end
for _, entry in ipairs(redis.call('XRANGE', EVENTS, '-', '+')) do
  local fields = {}
  for i = 1, #entry[2], 2 do fields[entry[2][i]] = entry[2][i + 1] end
  if fields.type == 'snapshot' and (cjson.decode(fields.data).iteration or 0) > after then
    redis.call('XDEL', EVENTS, entry[1])
  end
end
return keep
"""

# ARGV 4: files (JSON object), 5: snapshot event data (JSON) or "", 6: lease token.
# The event only for a file not listed yet: a resumed run publishes its checkpoint's snapshots again.
_ADD_FILES = """
if not holds(ARGV[6]) then return 0 end
local added = 0
for name, path in pairs(cjson.decode(ARGV[4])) do added = added + redis.call('HSET', FILES, name, path) end
if ARGV[5] ~= '' and added > 0 then emit('snapshot', ARGV[5]) end
return 1
"""

# ARGV 4: final status, 5: fields (JSON object), 6: files (JSON object), 7: error (JSON) or "",
# 8: duration histogram bounds ("1,5,30"), 9: lease token. KEYS 11: the duration statistics
# hash, 12: the lease index. Returns "ok", or the status the job had if it was not running
# under this lease (nothing changed).
_FINISH = """
local status = redis.call('HGET', JOB, 'status')
-- Also 'queued' with our token: a reaper took the job back while we could not reach Redis
-- and nobody has started it since; the run did end, so its end counts.
local ours = redis.call('HGET', JOB, 'lease_token') == ARGV[9]
if not ours or (status ~= 'running' and status ~= 'queued') then return status or 'missing' end
hset_json(JOB, ARGV[5])
hset_json(FILES, ARGV[6])
local to = ARGV[4]
local duration = now() - (tonumber(redis.call('HGET', JOB, 'started_at')) or now())
for bound in string.gmatch(ARGV[8], '[^,]+') do
  if duration <= tonumber(bound) then redis.call('HINCRBY', KEYS[11], to .. ':' .. bound, 1) end
end
redis.call('HINCRBY', KEYS[11], to .. ':count', 1)
redis.call('HINCRBYFLOAT', KEYS[11], to .. ':sum', duration)
local error = nil
if ARGV[7] ~= '' then error = cjson.decode(ARGV[7]) end
finish(status, to, error)
release(KEYS[12])
return 'ok'
"""

# ARGV 4: "1" to delete only if the record has already expired (retention sweep).
# KEYS 11: the lease index (a queued job may await its dispatch there).
# Returns the status the job had, "missing" (already gone) or "running" (refused).
_DELETE = """
local status = redis.call('HGET', JOB, 'status')
if status == 'running' or (status and ARGV[4] == '1') then return status end
local idem = redis.call('HGET', JOB, 'idempotency_key')
if idem and redis.call('GET', idem) == ID then redis.call('DEL', idem) end
redis.call('DEL', JOB, FILES, HISTORY, EVENTS)
for _, index in pairs(INDEX) do redis.call('ZREM', index, ID) end
redis.call('ZREM', ALL, ID)
redis.call('ZREM', KEYS[11], ID)
return status or 'missing'
"""

# ARGV 4: lease token, 5: lease in seconds. KEYS 11: the lease index.
# Returns 1 (renewed), 2 (taken back: a reaper had re-queued the job while this holder could
# not reach Redis, and no one has claimed it since) or 0 (lost: the holder must stop).
_RENEW = """
local status = redis.call('HGET', JOB, 'status')
if redis.call('HGET', JOB, 'lease_token') ~= ARGV[4] or (status ~= 'running' and status ~= 'queued') then
  return 0
end
local t = now()
hold(KEYS[11], t, ARGV[5])
redis.call('HSET', JOB, 'heartbeat_at', fmt(t))
if status == 'running' then return 1 end
move('queued', 'running')
redis.call('HDEL', JOB, 'dispatch')
emit('status', cjson.encode({status='running', attempt=tonumber(redis.call('HGET', JOB, 'attempts'))}))
return 2
"""

# ARGV 4: lease token, 5: dispatch id, 6: dispatch grace in seconds, 7: reason (for the event).
# KEYS 11: the lease index. A run that stopped early to be resumed elsewhere (its worker is
# shutting down) puts the job back in the queue; the attempt does not count against the cap.
# Returns 1, or 0 if this lease no longer holds the job.
_HAND_BACK = """
if not holds(ARGV[4]) then return 0 end
move('running', 'queued')
redis.call('HINCRBY', JOB, 'attempts', -1)
redis.call('HDEL', JOB, 'lease_token', 'lease_expires_at', 'worker')
await_dispatch(KEYS[11], now(), ARGV[5], ARGV[6])
emit('status', cjson.encode({status='queued', reason=ARGV[7]}))
return 1
"""

# ARGV 4: attempt cap, 5: message when the cap is reached, 6: dispatch id, 7: dispatch grace
# in seconds, 8: margin in seconds. KEYS 11: the lease index. For a job whose lease-index entry
# expired more than the margin ago:
# "requeued" (running, but its holder stopped renewing: now queued, send it again),
# "dispatch" (queued, its message maybe never sent: send it again), "failed" (the attempt cap
# is reached: now failed), "live" (renewed meanwhile) or "gone" (ended or deleted).
_REAP = """
local expires = redis.call('ZSCORE', KEYS[11], ID)
if not expires then return 'gone' end
local t = now()
if tonumber(expires) + tonumber(ARGV[8]) > t then return 'live' end
local status = redis.call('HGET', JOB, 'status')
if status ~= 'running' and status ~= 'queued' then
  redis.call('ZREM', KEYS[11], ID)
  return 'gone'
end
local reply = 'dispatch'
if status == 'running' then
  if (tonumber(redis.call('HGET', JOB, 'attempts')) or 0) >= tonumber(ARGV[4]) then
    finish('running', 'failed', {code='worker_lost', message=ARGV[5]})
    release(KEYS[11])
    return 'failed'
  end
  move('running', 'queued')
  -- The token stays until another worker claims the job: a holder that was only cut off
  -- from Redis takes it back on its next renewal.
  redis.call('HDEL', JOB, 'lease_expires_at', 'worker')
  emit('status', cjson.encode({status='queued', reason='lease_expired'}))
  reply = 'requeued'
end
await_dispatch(KEYS[11], t, ARGV[6], ARGV[7])
return reply
"""

# ARGV 4: dispatch id, 5: redispatch delay in seconds (0: never). KEYS 11: the lease index.
# The message of that dispatch was sent. A broker can still lose it (a Redis that is full when
# it is delivered: the pop succeeds, the bookkeeping write does not), so while the job waits a
# reaper sends it again after the delay, then after twice as long, and so on; a worker that
# finds the job taken or ended drops the extra message.
_CONFIRM_DISPATCH = """
if redis.call('HGET', JOB, 'status') ~= 'queued' or redis.call('HGET', JOB, 'dispatch') ~= ARGV[4] then
  return 0
end
redis.call('HDEL', JOB, 'dispatch')
local after = tonumber(ARGV[5])
if after > 0 then
  local sent = redis.call('HINCRBY', JOB, 'dispatches', 1)
  redis.call('ZADD', KEYS[11], now() + after * 2 ^ math.min(sent - 1, 16), ID)
else
  redis.call('ZREM', KEYS[11], ID)
end
return 1
"""

# KEYS 1: workers index. ARGV 1: worker name, 2: forget workers silent for this many seconds.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return 1
"""

# KEYS 1: workers index. ARGV 1: max age of a heartbeat in seconds. Returns the live count.
_LIVE_WORKERS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[1]), '+inf')
"""


@dataclass(frozen=True)
class Scripts:
    """The scripts registered on one client (sync or asyncio: both have ``register_script``)."""

    create: Any
    cancel: Any
    claim: Any
    progress: Any
    append_history: Any
    rewind_history: Any
    add_files: Any
    finish: Any
    delete: Any
    heartbeat: Any
    live_workers: Any
    renew: Any
    hand_back: Any
    reap: Any
    confirm_dispatch: Any
    queued_counts: Any

    @classmethod
    def register(cls, client: Any) -> Scripts:
        job_script = {
            "create": _CREATE, "cancel": _CANCEL, "claim": _CLAIM, "progress": _PROGRESS,
            "append_history": _APPEND_HISTORY, "rewind_history": _REWIND_HISTORY,
            "add_files": _ADD_FILES, "finish": _FINISH, "delete": _DELETE,
            "renew": _RENEW, "hand_back": _HAND_BACK, "reap": _REAP, "confirm_dispatch": _CONFIRM_DISPATCH,
        }
        scripts = {name: client.register_script(_PRELUDE + _LEASE + body) for name, body in job_script.items()}
        scripts["heartbeat"] = client.register_script(_HEARTBEAT)
        scripts["live_workers"] = client.register_script(_LIVE_WORKERS)
        scripts["queued_counts"] = client.register_script(_QUEUED_COUNTS)
        return cls(**scripts)
