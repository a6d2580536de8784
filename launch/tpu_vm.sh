#!/usr/bin/env bash
# Train on a Cloud TPU VM or pod slice: create it (or reuse it), ship this repo to every worker,
# install it, and start `python -m anytime.main` on all workers, logging per worker.
#
#   launch/tpu_vm.sh --name NAME --zone ZONE --accelerator-type v4-16 \
#       --workdir gs://BUCKET/runs/RUN --config configs/lm_tiny.py [options] [-- --config.x=y ...]
#
# Options:
#   --name NAME               TPU VM name (required)
#   --zone ZONE               e.g. us-central2-b (required)
#   --accelerator-type TYPE   e.g. v4-8, v4-16, v5litepod-16 (default v4-8)
#   --runtime-version V       TPU software version (default tpu-ubuntu2204-base)
#   --project PROJECT         GCP project (default: gcloud's configured one)
#   --spot | --preemptible    cheaper, preemptible capacity
#   --config FILE             config file, relative to the repo (required)
#   --workdir gs://...        run directory shared by all workers (required; gs:// for pods)
#   --repo URL [--ref REF]    git clone URL (and branch/tag/commit) on the workers; default:
#                             upload this checkout's HEAD (git archive) with tpu-vm scp
#   --jax-spec SPEC           pip spec of JAX for TPUs (default "jax[tpu]")
#   --constraints FILE        pip constraints, relative to the repo (default
#                             launch/constraints.txt: the versions the tests passed with;
#                             "none" installs the newest releases)
#   --log-dir DIR             log folder on each worker (default ~/anytime_logs)
#   --dry-run                 print every command, run none (no gcloud call at all)
#   everything after --       extra flags for anytime.main (e.g. --config.train.total_steps=...)
#
# Re-run the same command after a preemption: a preempted or stopped VM is deleted and created
# again, and the trainer resumes from the newest intact checkpoint in --workdir.
set -euo pipefail

name=""; zone=""; accelerator_type="v4-8"; runtime_version="tpu-ubuntu2204-base"; project=""
capacity=""; config=""; workdir=""; repo=""; ref=""; jax_spec="jax[tpu]"
log_dir="~/anytime_logs"; dry_run=0; constraints="launch/constraints.txt"
extra=()

die() { echo "error: $*" >&2; exit 2; }
need() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) need "$@"; name="$2"; shift 2 ;;
    --zone) need "$@"; zone="$2"; shift 2 ;;
    --accelerator-type) need "$@"; accelerator_type="$2"; shift 2 ;;
    --runtime-version) need "$@"; runtime_version="$2"; shift 2 ;;
    --project) need "$@"; project="$2"; shift 2 ;;
    --spot) capacity="--spot"; shift ;;
    --preemptible) capacity="--preemptible"; shift ;;
    --config) need "$@"; config="$2"; shift 2 ;;
    --workdir) need "$@"; workdir="$2"; shift 2 ;;
    --repo) need "$@"; repo="$2"; shift 2 ;;
    --ref) need "$@"; ref="$2"; shift 2 ;;
    --jax-spec) need "$@"; jax_spec="$2"; shift 2 ;;
    --constraints) need "$@"; constraints="$2"; shift 2 ;;
    --log-dir) need "$@"; log_dir="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
[[ -n "$name" ]] || die "--name is required (the TPU VM name)"
[[ -n "$zone" ]] || die "--zone is required (e.g. us-central2-b)"
[[ -n "$config" ]] || die "--config is required (e.g. configs/lm_tiny.py)"
[[ -n "$workdir" ]] || die "--workdir is required (gs://BUCKET/PATH, shared by all workers)"
if [[ "$workdir" != gs://* ]]; then
  echo "warning: --workdir '$workdir' is not on GCS; on a multi-worker slice every worker" \
       "needs the same shared directory" >&2
fi
[[ -z "$ref" || -n "$repo" ]] || die "--ref needs --repo"

common=(--zone="$zone")
[[ -n "$project" ]] && common+=(--project="$project")
remote_dir="anytime"  # in each worker's home

# A path for a remote shell: quoted, except a leading ~/ (expanded there as $HOME).
remote_path() {
  if [[ "$1" == "~" ]]; then printf '"$HOME"'
  elif [[ "$1" == "~/"* ]]; then printf '"$HOME"/%q' "${1#\~/}"
  else printf '%q' "$1"; fi
}

# Prints a command (each argument single-quoted where needed); runs it unless --dry-run.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
run() {
  local line="" arg
  for arg in "$@"; do line+="$(quote "$arg") "; done
  echo "${line% }"
  if ((dry_run == 0)); then "$@"; fi
}
ssh_all() {  # ssh_all COMMAND: runs COMMAND on every worker
  run gcloud compute tpus tpu-vm ssh "$name" "${common[@]}" --worker=all --command="$1"
}

# 1. The VM: reuse a READY one, recreate a preempted/stopped one, create a missing one.
state="ABSENT"
if ((dry_run)); then
  run gcloud compute tpus tpu-vm describe "$name" "${common[@]}" --format='value(state)'
  echo "# (dry run: assuming the TPU VM does not exist yet)"
else
  state="$(gcloud compute tpus tpu-vm describe "$name" "${common[@]}" --format='value(state)' \
           2>/dev/null || echo ABSENT)"
  echo "# TPU VM $name: ${state:-ABSENT}"
fi
case "${state:-ABSENT}" in
  READY) ;;
  PREEMPTED|TERMINATED|STOPPED|FAILED)
    run gcloud compute tpus tpu-vm delete "$name" "${common[@]}" --quiet
    state="ABSENT" ;;
  CREATING|STARTING|RESTARTING|REPAIRING)
    die "TPU VM $name is $state; re-run when it is READY" ;;
esac
if [[ "${state:-ABSENT}" == "ABSENT" ]]; then
  create=(gcloud compute tpus tpu-vm create "$name" "${common[@]}"
          --accelerator-type="$accelerator_type" --version="$runtime_version")
  [[ -n "$capacity" ]] && create+=("$capacity")
  run "${create[@]}"
fi

# 2. The code, on every worker.
if [[ -n "$repo" ]]; then
  checkout="git -C $remote_dir fetch --all --tags --quiet"
  [[ -n "$ref" ]] && checkout+=" && git -C $remote_dir checkout --quiet $(printf '%q' "$ref")"
  [[ -z "$ref" ]] && checkout+=" && git -C $remote_dir pull --ff-only --quiet"
  ssh_all "set -e; [ -d $remote_dir/.git ] || git clone --quiet $(printf '%q' "$repo") $remote_dir; $checkout"
else
  repo_root="$(cd "$(dirname "$0")/.." && pwd)"
  tarball="${TMPDIR:-/tmp}/anytime-$name.tar.gz"
  run git -C "$repo_root" archive --format=tar.gz -o "$tarball" HEAD
  run gcloud compute tpus tpu-vm scp "$tarball" "$name:anytime.tar.gz" "${common[@]}" --worker=all
  ssh_all "set -e; mkdir -p $remote_dir && tar -xzf anytime.tar.gz -C $remote_dir"
fi

# 3. Install (idempotent).
pins=""
[[ "$constraints" != none ]] && pins="-c $(printf '%q' "$constraints")"
ssh_all "set -e; cd $remote_dir && python3 -m pip install --quiet -U $pins $(printf '%q' "$jax_spec") gcsfs && python3 -m pip install --quiet $pins -e ."

# 4. Start the trainer on all workers at once (jax.distributed finds the slice by itself),
#    detached, one log per worker; a run already going on a worker is left alone.
train=(python3 -m anytime.main --config "$config" --workdir "$workdir" "${extra[@]}")
printf -v train_line '%q ' "${train[@]}"
remote_log_dir="$(remote_path "$log_dir")"
log="$remote_log_dir/\$(hostname).log"
ssh_all "cd $remote_dir && mkdir -p $remote_log_dir && if pgrep -f '^python3 -m anytime.main' >/dev/null; then echo \"\$(hostname): already training\"; else nohup ${train_line% } >>$log 2>&1 </dev/null & echo \"\$(hostname): started, log $log\"; fi"

echo "# logs: gcloud compute tpus tpu-vm ssh $name ${common[*]} --worker=all --command='tail -n 5 $remote_log_dir/*.log'"
