#!/usr/bin/env bash
# N trainer processes on this machine, CPU backend, coordinated over 127.0.0.1 (for testing
# multi-host code paths without a cluster).
#
#   launch/local_multiprocess.sh -n 2 -d 2 -- --config configs/lm_tiny.py --workdir /tmp/mp \
#       [--config.x=y ...]
#
# Flags: -n processes (default 2), -d CPU devices per process (default 2), -p coordinator port
# (default: a free one), -l log dir (default <workdir>/logs). Everything after -- goes to
# `python -m anytime.main` of every process. Logs: <log dir>/process_<i>.log. Exits non-zero if
# any process fails (and then stops the others); Ctrl-C / SIGTERM is forwarded to all processes,
# and the script then exits 0 if every process saved and exited 0.
# Environment: PYTHON (interpreter, default python); XLA_FLAGS and JAX_PLATFORMS are set here.
set -euo pipefail

num_processes=2
devices_per_process=2
port=""
log_dir=""
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
while getopts "n:d:p:l:h" opt; do
  case "$opt" in
    n) num_processes="$OPTARG" ;;
    d) devices_per_process="$OPTARG" ;;
    p) port="$OPTARG" ;;
    l) log_dir="$OPTARG" ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift
for value in "$num_processes" "$devices_per_process"; do
  if ! [[ "$value" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: -n and -d must be positive integers, got '$value'" >&2; exit 2
  fi
done

workdir=""
for arg in "$@"; do
  case "$arg" in --workdir=*) workdir="${arg#--workdir=}" ;; esac
done
prev=""
for arg in "$@"; do
  [[ "$prev" == "--workdir" ]] && workdir="$arg"
  prev="$arg"
done
if [[ -z "$workdir" ]]; then
  echo "error: pass --workdir DIR after -- (it is given to every process)" >&2; exit 2
fi
log_dir="${log_dir:-$workdir/logs}"
mkdir -p "$log_dir"
if [[ -z "$port" ]]; then
  port="$("${PYTHON:-python}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
# SIGTERM / Ctrl-C: forward it, then exit with the children's verdict (0 when every process
# saved its checkpoint and exited 0, as the trainer does on SIGTERM).
forwarded=0
trap 'forwarded=1; cleanup' TERM INT

for ((i = 0; i < num_processes; i++)); do
  JAX_PLATFORMS=cpu \
  XLA_FLAGS="--xla_force_host_platform_device_count=$devices_per_process" \
    "${PYTHON:-python}" -m anytime.main "$@" \
      --config.distributed.coordinator_address="127.0.0.1:$port" \
      --config.distributed.num_processes="$num_processes" \
      --config.distributed.process_id="$i" \
      >"$log_dir/process_$i.log" 2>&1 &
  pids+=("$!")
done
echo "started $num_processes processes (coordinator 127.0.0.1:$port); logs in $log_dir/process_<i>.log"

# Poll: a process that ended is reaped with `wait PID` (its own exit status, also after a
# forwarded SIGTERM); the first failure stops the others (they would block in collectives).
status=0
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  still=()
  for pid in "${running[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then still+=("$pid"); continue; fi
    code=0
    wait "$pid" || code=$?
    if ((code != 0 && status == 0)); then
      status=$code
      if ((forwarded == 0)); then
        echo "process $pid exited with status $code; stopping the others (logs: $log_dir)" >&2
        cleanup
      fi
    fi
  done
  running=("${still[@]+"${still[@]}"}")
  ((${#running[@]} > 0)) && sleep 0.2
done
if ((forwarded)); then echo "forwarded SIGTERM; processes exited with status $status" >&2; fi
exit "$status"
