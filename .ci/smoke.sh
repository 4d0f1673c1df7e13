#!/usr/bin/env bash
# Builds dist/tether and runs it from a folder outside the repository, with no
# Bun and no node_modules on PATH: check, --version, and a proxied request.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
"$ROOT/node_modules/.bin/bun" run build

WORK=$(mktemp -d)
cp dist/tether "$WORK/"
cp certs/dev.pem certs/dev-key.pem "$WORK/"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P=$(free_port); B1=$(free_port); B2=$(free_port); S=$(free_port)
cat > "$WORK/config.json" <<JSON
{
  "listeners": [
    { "name": "web", "protocol": "http", "address": "127.0.0.1:$P", "pool": "app" },
    { "name": "websecure", "protocol": "https", "address": "127.0.0.1:$S", "pool": "app",
      "tls": { "certificates": [{ "cert": "dev.pem", "key": "dev-key.pem" }] } }
  ],
  "pools": { "app": { "backends": [
    { "id": "app-1", "url": "http://127.0.0.1:$B1" },
    { "id": "app-2", "url": "http://127.0.0.1:$B2" } ] } },
  "demo": { "backends": [ { "id": "app-1", "address": "127.0.0.1:$B1" }, { "id": "app-2", "address": "127.0.0.1:$B2" } ] }
}
JSON
# A .env and bunfig.toml in the current folder must not change the binary.
echo 'BUN_CONFIG_VERBOSE_FETCH=curl' > "$WORK/.env"
printf '[run]\npreload = ["./nope.ts"]\n' > "$WORK/bunfig.toml"

cd /
env -i PATH=/usr/bin:/bin HOME="$WORK" "$WORK/tether" --version
env -i PATH=/usr/bin:/bin "$WORK/tether" check --config "$WORK/config.json"
echo '{"listeners": []}' > "$WORK/bad.json"
set +e
env -i PATH=/usr/bin:/bin "$WORK/tether" check --config "$WORK/bad.json"; code=$?
set -e
[ "$code" -eq 2 ] || { echo "bad config exit code $code, expected 2"; exit 1; }

cd "$WORK"
env -i PATH=/usr/bin:/bin ./tether --config "$WORK/config.json" > "$WORK/out.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do curl -s -o /dev/null "http://127.0.0.1:$P/" && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$P/" | grep -q '"backend":"app-' || { cat "$WORK/out.log"; exit 1; }
curl -sfk "https://127.0.0.1:$S/" | grep -q '"backend":"app-' || { cat "$WORK/out.log"; exit 1; }
kill -TERM $PID
wait $PID

# The same with two worker threads: the worker module must be inside the binary.
sed -i 's/"demo":/"workers": 2, "demo":/' "$WORK/config.json"
env -i PATH=/usr/bin:/bin ./tether --config "$WORK/config.json" > "$WORK/out2.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do grep -q '"workers":2' "$WORK/out2.log" && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$P/" | grep -q '"backend":"app-' || { cat "$WORK/out2.log"; exit 1; }
grep -q "worker error" "$WORK/out2.log" && { cat "$WORK/out2.log"; exit 1; }
kill -TERM $PID
wait $PID
echo "binary smoke test passed"
