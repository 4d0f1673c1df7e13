-- Returning clients for wrk (wrk 4.x, LuaJIT).
--
-- Each wrk thread simulates `wanted` clients (first script argument, default 64).
-- Until it has them, requests carry no cookie; the name=value of each response's
-- Set-Cookie becomes one client. After that every request presents one of those
-- cookies, round robin, so each proxy does the work of a sticky session on every
-- request: parse the cookie, route by it (HAProxy: server cookie; tether: its
-- token; nginx: hash of the value).
--
-- A proxy that never sets a cookie (nginx OSS, or tether with persistence off)
-- gets client-made cookies "SRVID=c1".."SRVID=cN" after `wanted` cookie-less
-- answers, so it still has to parse and hash a cookie per request.
--
-- wrk gives no connection identity to request()/response(), so a "client" is a
-- cookie, not a connection. done() prints one line "@@BENCH_JSON {...}" that
-- bench/lib/wrk.ts parses.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

-- Globals (not locals) so done() can read them through thread:get().
wanted = 64
captured = 0        -- clients whose cookie came from a Set-Cookie
synthesized = 0     -- 1 when this thread fell back to client-made cookies
cookieless_sent = 0 -- requests sent without a cookie
answered = 0        -- responses seen
set_cookies = 0     -- responses that carried a Set-Cookie

local reqs = {}     -- pre-built request strings, one per client
local plain         -- the cookie-less request
local next_client = 0

local function build(cookie)
  local headers = {}
  for k, v in pairs(wrk.headers) do headers[k] = v end
  if cookie then headers["Cookie"] = cookie end
  return wrk.format(nil, nil, headers, nil)
end

function init(args)
  wanted = tonumber(args[1]) or 64
  plain = build(nil)
end

local function add_client(pair)
  reqs[#reqs + 1] = build(pair)
end

function request()
  local n = #reqs
  if n < wanted then
    cookieless_sent = cookieless_sent + 1
    return plain
  end
  next_client = next_client % n + 1
  return reqs[next_client]
end

local function set_cookie_of(headers)
  for name, value in pairs(headers) do
    if string.lower(name) == "set-cookie" then return value end
  end
  return nil
end

function response(status, headers, body)
  answered = answered + 1
  local sc = set_cookie_of(headers)
  if sc then set_cookies = set_cookies + 1 end
  if #reqs >= wanted then return end
  if sc then
    local pair = string.match(sc, "^%s*([^;]+)")
    if pair then
      add_client(pair)
      captured = captured + 1
    end
  elseif captured == 0 and answered >= wanted then
    -- This proxy does not insert cookies: make the clients' own.
    for i = 1, wanted do add_client("SRVID=c" .. i) end
    synthesized = 1
  end
end

function done(summary, latency, requests)
  local c = { captured = 0, synthesized = 0, cookieless = 0, setCookies = 0 }
  for _, t in ipairs(threads) do
    c.captured = c.captured + (t:get("captured") or 0)
    c.synthesized = c.synthesized + (t:get("synthesized") or 0)
    c.cookieless = c.cookieless + (t:get("cookieless_sent") or 0)
    c.setCookies = c.setCookies + (t:get("set_cookies") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    '@@BENCH_JSON {"requests":%d,"durationUs":%d,"bytes":%d,' ..
    '"latencyUs":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f},' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"clients":{"threads":%d,"captured":%d,"synthesizedThreads":%d,"cookielessSent":%d,"setCookies":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout,
    #threads, c.captured, c.synthesized, c.cookieless, c.setCookies))
end
