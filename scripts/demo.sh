#!/usr/bin/env bash
# The demo gateway on one machine: a local mosquitto (the "cloud" broker), a simulated
# Modbus TCP meter, an RS-485 line with two units on a socat pty pair, the agent, and
# a cloud-side subscriber printing every topic and payload it receives. Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

run=run/demo
rm -rf "$run" && mkdir -p "$run/state"
py=.venv/bin/python
free_port() { "$py" -c 'from sim.broker import free_port; print(free_port())'; }
mqtt_port=$(free_port)
modbus_port=$(free_port)
paas_port=$(free_port)

pids=()
cleanup() {
    trap - INT TERM EXIT
    # Stop in reverse order of start: the agent before the broker it talks to.
    for ((i=${#pids[@]}-1; i>=0; i--)); do
        kill -TERM "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
    echo "demo: stopped; logs in $run/"
}
trap cleanup INT TERM EXIT

socat pty,raw,echo=0,link="$run/ttyAgent" pty,raw,echo=0,link="$run/ttyPlant" 2>"$run/socat.log" &
pids+=($!)
socat pty,raw,echo=0,link="$run/ttyGpsAgent" pty,raw,echo=0,link="$run/ttyGps" 2>"$run/socat-gps.log" &
pids+=($!)
for _ in $(seq 100); do
    [ -e "$run/ttyAgent" ] && [ -e "$run/ttyPlant" ] && [ -e "$run/ttyGps" ] && [ -e "$run/ttyGpsAgent" ] && break
    sleep 0.1
done

"$py" -m sim.broker --dir "$run/broker" --port "$mqtt_port" --persistence >"$run/broker.log" 2>&1 &
pids+=($!)
"$py" -m sim.plant --port "$modbus_port" --rtu-device "$run/ttyPlant" --baudrate 19200 \
    >"$run/plant.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "mqtt on" "$run/broker.log" 2>/dev/null && grep -q "modbus rtu" "$run/plant.log" 2>/dev/null && break; sleep 0.1; done
# The platform's REST API (sim.paas), fed by the broker as the real one is.
"$py" -m sim.paas --port "$paas_port" --broker-port "$mqtt_port" >"$run/paas.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "paas on" "$run/paas.log" 2>/dev/null && break; sleep 0.1; done
printf 'test-api-key\n' >"$run/state/paas-api-key"

sed -e "s|@MQTT_PORT@|$mqtt_port|" -e "s|@MODBUS_PORT@|$modbus_port|" \
    -e "s|@RTU_DEVICE@|$PWD/$run/ttyAgent|" -e "s|@STATE@|$PWD/$run/state|" \
    -e "s|@GPS_DEVICE@|$PWD/$run/ttyGpsAgent|" -e "s|@PAAS_PORT@|$paas_port|" \
    demo/config.toml >"$run/config.toml"
.venv/bin/orio-agent check-config "$run/config.toml" >"$run/check-config.txt"
head -4 "$run/check-config.txt"
echo "demo: the cloud's data buckets and shapes, made from the config (orio-agent cloud apply):"
.venv/bin/orio-agent cloud apply --config "$run/config.toml" | sed 's/^/  /'

echo "demo: broker 127.0.0.1:$mqtt_port, Modbus TCP 127.0.0.1:$modbus_port, RTU $run/ttyAgent"
echo "demo: set a value from the cloud side, in another terminal (the \$conf/\$reported line then shows 750):"
# A client id of its own: the broker disconnects a client whose id another one takes.
echo "  mosquitto_pub -h 127.0.0.1 -p $mqtt_port -i app:miWll0Grv-you -u miWll0Grv -P 'cq8YUb8IPYmTYkfFaOhAtj-.~G_gjXdZ' -q 1 -r \\"
echo "    -t '\$thing/xY6Eie5hv/\$conf/\$expected/gw-1-setting' -m '[{\"id\":\"GW1_40807\",\"value\":750}]'"
echo "demo: what the agent sees, in another terminal:"
echo "  .venv/bin/orio-agent status --config $run/config.toml --points [--watch]"
echo "  .venv/bin/orio-agent poll-once --config $run/config.toml"
echo "  .venv/bin/orio-agent read plc 40001 --count 4 --config $run/config.toml"
echo "  .venv/bin/orio-agent cloud verify --config $run/config.toml   # what the platform holds"
echo "demo: agent log in $run/agent.log; what the cloud receives follows (Ctrl-C to stop)"
"$py" -m sim.gps "$run/ttyGps" >"$run/gps.log" 2>&1 &
pids+=($!)
.venv/bin/orio-agent run --config "$run/config.toml" >"$run/agent.log" 2>&1 &
pids+=($!)
"$py" -m sim.cloud --port "$mqtt_port" &
pids+=($!)
# A config round trip a few seconds in: the cloud sets GW1_40807 = 600 and the coil; the
# agent writes them to the meter, reads them back and reports on $conf/$reported.
(
    sleep 6
    pub() { mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -i app:miWll0Grv-demo -u miWll0Grv \
        -P 'cq8YUb8IPYmTYkfFaOhAtj-.~G_gjXdZ' -q 1 -r -t "\$thing/xY6Eie5hv/\$conf/\$expected/$1" -m "$2"; }
    pub gw-1-setting '[{"id":"GW1_40806","value":0},{"id":"GW1_40807","value":600}]'
    pub gw-1-mode '[{"id":"GW1_00800","value":1}]'
) &
round_trip=$!
# Until Ctrl-C, or until one of the long-running parts stops by itself.
wait -n "${pids[@]}" || true
kill "$round_trip" 2>/dev/null || true
