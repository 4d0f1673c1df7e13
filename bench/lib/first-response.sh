#!/usr/bin/env bash
# usage: first-response.sh PORT CMD [ARGS...]
# Starts CMD, sends GET / to 127.0.0.1:PORT until it answers 200, then kills CMD.
# bench/startup.ts times this with hyperfine. Polling uses bash's /dev/tcp, so
# no process is spawned per attempt; it busy-polls (no sleep between
# attempts), so run it on another core than CMD.
port=$1
shift
"$@" >/dev/null 2>&1 &
pid=$!
while ((SECONDS < 10)); do
  if exec 3<>"/dev/tcp/127.0.0.1/$port"; then
    printf 'GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n' >&3
    status=""
    read -r status <&3
    exec 3<&-
    if [[ $status == "HTTP/1.1 200"* ]]; then
      kill -KILL "$pid"
      wait "$pid"
      exit 0
    fi
  fi 2>/dev/null
done
kill -KILL "$pid"
echo "no 200 from port $port within 10 s" >&2
exit 1
