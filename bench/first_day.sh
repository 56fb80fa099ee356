#!/bin/bash
# Times a new site's first day, following README.md's walked blocks verbatim:
# `git clone` -> quick start -> first alert on mosquitto_sub, then the
# service install -> the service ready -> its first alert.
#
#   sudo bench/first_day.sh --on-a-disposable-machine
#
# Root only, on a machine you can throw away: it installs Debian packages,
# creates the system user hl7-alerts, /opt/hl7-alerts, /etc/hl7-alerts,
# /var/lib/hl7-alerts and the unit, and removes them again at the end. It
# needs ports 2575 and 9464 free and the Debian Mosquitto the quick start
# installs on 1883. Where there is no sudo, `sudo` runs the command (we are
# root) and `sudo -u U` uses runuser; where systemd is not PID 1,
# `systemctl enable --now` runs the installed unit's ExecStartPre and
# ExecStart as its User, UMask and WorkingDirectory. Every package is
# downloaded (PIP_NO_CACHE_DIR), as on a new machine.
set -euo pipefail
[ "${1:-}" = --on-a-disposable-machine ] || { sed -n '2,16p' "$0"; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
! id hl7-alerts >/dev/null 2>&1 || { echo "user hl7-alerts exists: not a fresh machine" >&2; exit 2; }
SOURCE=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
export PIP_NO_CACHE_DIR=1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin  # Debian's python3
W=$(mktemp -d /tmp/hl7-alerts-first-day.XXXXXX); export W
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  [ -f "$W/service.pid" ] && { kill -TERM $(pgrep -P "$(cat "$W/service.pid")") 2>/dev/null || true; }
  wait 2>/dev/null || true
  for _ in $(seq 1 150); do pgrep -u hl7-alerts >/dev/null 2>&1 || break; sleep 0.2; done  # the service stopping
  id hl7-alerts >/dev/null 2>&1 && { userdel hl7-alerts || echo "could not remove the user hl7-alerts" >&2; }
  rm -rf /opt/hl7-alerts /etc/hl7-alerts /var/lib/hl7-alerts /etc/systemd/system/hl7-alerts.service /tmp/hl7-alerts-build
  mosquitto_pub -r -n -t hl7alerts/status 2>/dev/null || true  # the retained status the runs left
}
trap cleanup EXIT
command -v sudo >/dev/null || sudo() { if [ "$1" = -u ]; then local u=$2; shift 2; runuser -u "$u" -- "$@"; else "$@"; fi; }
if [ "$(ps -p 1 -o comm=)" != systemd ]; then
  systemctl() {
    case "$*" in
      daemon-reload) ;;
      "enable --now hl7-alerts")
        local unit=/etc/systemd/system/hl7-alerts.service pre start
        pre=$(sed -n 's/^ExecStartPre=//p' $unit); start=$(sed -n 's/^ExecStart=//p' $unit)
        runuser -u hl7-alerts -- bash -c "umask 0077; cd /var/lib/hl7-alerts; $pre" >/dev/null
        runuser -u hl7-alerts -- bash -c "umask 0077; cd /var/lib/hl7-alerts; exec $start" >"$W/service.log" 2>&1 &
        echo $! >"$W/service.pid";;
      *) echo "systemctl $*: not simulated" >&2; return 1;;
    esac
  }
else
  SYSTEMD=1
fi
export -f sudo 2>/dev/null || true
export -f systemctl 2>/dev/null || true
block() { awk -v m="walked by tests/test_readme.py: $1" 'index($0,m){f=1;next} f&&/^```sh/{g=1;next} g&&/^```/{exit} g{print}' README.md; }
now() { date +%s.%N; }
wait_for() { for _ in $(seq 1 900); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.2; done; echo "timeout: $2 in $1" >&2; exit 1; }
since() { echo "$1 - $2" | bc; }

echo "load at start: $(uptime)"
t0=$(now)
git clone -q "$SOURCE" "$W/hl7-alerts"
cd "$W/hl7-alerts"
bash -c "$(block quick-start)" >"$W/quickstart.log" 2>&1 &
QS=$!; PIDS+=("$QS")  # bash -c execs the chain's last command: this is serve
wait_for "$W/quickstart.log" daemon_ready
t_ready=$(now)
mosquitto_sub -t 'hl7alerts/#' -v >"$W/sub.out" 2>&1 &
PIDS+=("$!")
wait_for "$W/sub.out" 'hl7alerts/status '
.venv/bin/hl7-alerts send --port 2575 samples/*.hl7 >"$W/send.out"
wait_for "$W/sub.out" 'hl7alerts/alerts/'
t_alert=$(now)
kill -TERM "$QS"; wait "$QS" || true

t_s0=$(now)
while IFS= read -r line; do
  case "$line" in ""|\#*) continue;; esac
  bash -c "$line" >>"$W/install.log" 2>&1
done < <(block service-install)
if [ -n "${SYSTEMD:-}" ]; then
  until journalctl -u hl7-alerts --no-pager | grep -q daemon_ready; do sleep 0.2; done
else
  wait_for "$W/service.log" daemon_ready
fi
t_service=$(now)
/opt/hl7-alerts/venv/bin/hl7-alerts send --port 2575 samples/01_seed_order_azathioprine.hl7 \
  samples/02_seed_liver_panel_above_3xuln.hl7 >>"$W/send.out"
wait_for "$W/sub.out" 'aza.hepatotoxicity.stop.*"version": *1'
t_service_alert=$(now)
sudo -u hl7-alerts /opt/hl7-alerts/venv/bin/hl7-alerts alerts list --config /etc/hl7-alerts/config.yaml
ls -la /var/lib/hl7-alerts
[ -n "${SYSTEMD:-}" ] && systemctl disable --now hl7-alerts
echo "git clone to the quick start's daemon ready: $(since "$t_ready" "$t0") s; to the first alert: $(since "$t_alert" "$t0") s"
echo "service install to the service ready: $(since "$t_service" "$t_s0") s; to its first alert: $(since "$t_service_alert" "$t_s0") s"
echo "git clone to the service ready: $(since "$t_service" "$t0") s"
echo "load at end: $(uptime)"
