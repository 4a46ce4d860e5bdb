#!/usr/bin/env bash
# The main job on built-in defaults: a Starling mesh on this machine, bridged to MQTT.
# Starts the gateway (which runs its own Mosquitto), a sensor and an actuator node, and shows
# for a few seconds what an MQTT client sees: mesh messages, node availability, a call from MQTT.
# Installs Mosquitto if it is missing. Traffic stays on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mosquitto >/dev/null 2>&1 || ! command -v mosquitto_sub >/dev/null 2>&1; then
    echo "installing mosquitto and its clients..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
fi
. scripts/lib.sh
cargo build --release -q -p starling-gateway -p starling-examples
bin="$(cargo_target_dir .)/release"
for b in starling sensor actuator; do need_built "$bin/$b"; done
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port=${MQTT_PORT:-18883}
export STARLING_PORT="${STARLING_PORT:-4783}"
echo "== mesh on 239.255.83.76:$STARLING_PORT (loopback), MQTT on 127.0.0.1:$port; set STARLING_PORT and MQTT_PORT to change them"
if (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "main-job: something already listens on 127.0.0.1:$port (another main job?); set MQTT_PORT to a free port" >&2
    exit 1
fi
"$bin/starling" keygen > "$work/net.key" && chmod 600 "$work/net.key"
export STARLING_KEY_FILE="$work/net.key"

echo "== gateway (with its own Mosquitto on 127.0.0.1:$port)"
"$bin/starling" gateway --listen "127.0.0.1:$port" --name gateway --rpc 'relay/relay.set' > >(sed -u 's/^/   gateway: /') 2>&1 &
pids+=($!)
for _ in $(seq 50); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

echo "== what an MQTT client sees (mosquitto_sub -t 'starling/#' -v), for 6 seconds"
timeout 6 mosquitto_sub -p "$port" -t 'starling/#' -v -F '%t  %p' \
    > >(grep --line-buffered -v '/alive\|/stats' | sed -u 's/^/   mqtt: /') 2>/dev/null &
pids+=($!)
sleep 0.5
(cd "$work" && exec "$bin/sensor" net.key kitchen-sensor) > >(sed -u 's/^/   sensor: /') 2>&1 &
pids+=($!)
(cd "$work" && exec "$bin/actuator" net.key relay) > >(sed -u 's/^/   actuator: /') 2>&1 &
pids+=($!)
sleep 2
echo "== a call from MQTT 5 (allowed by the gateway's --rpc): mosquitto_rr -t 'starling/\$rpc/relay/relay.set' -m 1"
mosquitto_rr -V mqttv5 -p "$port" -t 'starling/$rpc/relay/relay.set' -e 'starling/$reply/main-job' -m 1 -W 5 -F '   reply: %x (hex) %P' || echo "   (no reply)"
echo "== a command from MQTT to the mesh: mosquitto_pub -t starling/home/kitchen/cmd -m on"
mosquitto_pub -p "$port" -t starling/home/kitchen/cmd -m on
sleep 3.5
echo "== done"
