#!/usr/bin/env bash
# The GPU check: the benches against issue 10's targets, and the test suite, on a GPU machine.
#
# Runs unattended there through the shared set-up (../shared/gpu-check: prepare.sh here,
# then one `device` call carrying .gpu):
#     bash .gpu/run.sh bash bench/gpu_check.sh
# Writes 7 files to $OUT (or /tmp/gpu-check): env.txt (driver, context grants, upload
# choice), render_layer.txt/.json, compositor.txt/.json, tests.txt, and summary.txt (each
# target, met or not). Every step has its own time limit and the whole stays under
# BUDGET_S (default 380 s), so it finishes within about 7 minutes whatever hangs (on an
# H200 it should take about 3: the test suite alone ran in 52 s there).
# Runs here too (llvmpipe), for a rehearsal: PYGLET_HEADLESS=1 bash bench/gpu_check.sh
# GPU_CHECK_STEPS picks steps (default: all, in this order): env render_layer restart
# compositor summary preview tests. COMPOSITOR_ARGS replaces the compositor bench's runs.
set -u
steps=" ${GPU_CHECK_STEPS:-env render_layer restart compositor summary preview tests} "
want() { [[ "$steps" == *" $1 "* ]]; }
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
budget=${BUDGET_S:-380}
export PYGLET_HEADLESS=1 PYTHONUNBUFFERED=1
export PYTHONPATH=${PYTHONPATH:-}${PYTHONPATH:+:}$PWD/src
python=${PYTHON:-python3}
start=$SECONDS

note() { echo "[gpu_check $((SECONDS - start)) s] $*"; }

# Run "$@" for at most $1 seconds, never beyond the budget; stdout+stderr to $2.
step() {
  local limit=$1 log=$2
  shift 2
  local left=$((budget - (SECONDS - start)))
  ((limit > left)) && limit=$left
  if ((limit < 10)); then
    note "skipped (budget spent): $*" | tee -a "$log"
    return 0
  fi
  note "running (limit ${limit} s): $*"
  timeout -k 5 "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  note "exit $rc after $((SECONDS - start)) s: $*" | tee -a "$log"
}

# 1. What this machine is, and what the engine's contexts were granted on it.
want env && step 20 "$out/env.txt" "$python" - <<'PY'
import os, subprocess
try:
    query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
    print(subprocess.run(query, capture_output=True, text=True).stdout.strip())
except OSError:
    print("no nvidia-smi")
os.environ["ENGINE_GL_PRIORITY"] = "high"  # as the compositor asks
from engine.render.context import _contexts, context_grant, gl, gl_description, reset_status
from engine.compositor.process import preferred_upload
from engine.compositor.upload import driver_preference, gl_name
print(gl_description())
print("context attributes chosen:", [hex(v) for v in (_contexts.chosen or [])])
print("granted:", context_grant().as_dict(), "reset status:", reset_status())
pref = driver_preference(gl)
print("driver prefers for RGBA8:", None if pref is None else [gl_name(v) for v in pref])
print("layers:", preferred_upload().describe())
print("EGL extensions:", " ".join(sorted(_contexts.extensions)))
PY

# 2. The game's hand-off: synchronous readback against the pixel buffer; shared against GPU memory.
want render_layer && step 45 "$out/render_layer.txt" "$python" bench/render_layer.py 100 \
  --json "$out/render_layer.json"

# 2b. Restart: SIGKILL -> the new game's first frame, cold against the warm standby.
want restart && step 90 "$out/restart.txt" "$python" bench/restart.py --kills 4 \
  --json "$out/restart.json"

# 3. The compositor: 1 and 4 layers of 2x1280x720 and 2x1440x1600 at 90 Hz, the untuned
#    baseline in the same run, the game alone and crashed (restart times).
# shellcheck disable=SC2086
want compositor && step 180 "$out/compositor.txt" "$python" bench/compositor.py \
  ${COMPOSITOR_ARGS:---seconds 5 --crash-seconds 10 --sizes 1280x720,1440x1600 --layers 1,4 --before --no-linear} \
  --json "$out/compositor.json"

# 4. The targets, met or not (from the compositor's JSON).
want summary && step 15 "$out/summary.txt" "$python" - "$out/compositor.json" <<'PY'
import json, statistics, sys
try:
    runs = json.load(open(sys.argv[1]))
except OSError as exc:
    sys.exit(f"no compositor results: {exc}")
floor = runs["floor"]
def missed_pct(r):
    return 100.0 * r["missed"] / max(1, r["frames"] + r.get("skipped_slots", 0))
print(f"floor: {floor['missed']} missed of {floor['frames']} ({missed_pct(floor):.2f}%)")
for name, r in runs.items():
    if name == "floor" or "compose_ms_p99" not in r:
        continue
    ok_missed = missed_pct(r) <= missed_pct(floor) + 100.0 / max(1, r["frames"])  # one frame
    ok_p99 = r["compose_ms_p99"] <= 2.0
    uploads = (r.get("gl", {}).get("uploads_as") or ["?"])[0]
    print(f"{name:<14} {r['rate_hz']:6.2f} Hz  missed {r['missed']:>4} ({missed_pct(r):5.2f}%)"
          f" {'ok  ' if ok_missed else 'MISS'}  compose p99 {r['compose_ms_p99']:6.2f} ms"
          f" {'ok' if ok_p99 else 'OVER'}  timed frame {r['gl'].get('timed_frame_ms') or 0:.2f} ms"
          f"  [{uploads}]")
restarts = runs.get("crashes", {}).get("restart_ms") or []
if restarts:
    worst = max(restarts)
    print(f"restart: p50 {statistics.median(restarts):.0f} ms, max {worst:.0f} ms"
          f" ({'ok' if worst <= 100 else 'OVER'} against 100 ms)")
print("GPU priority:", next(r for n, r in runs.items() if n != "floor")["priority"])
PY

# 4b. What a preview that saturates its own budget costs the live game and the compositor.
want preview && step 90 "$out/preview.txt" "$python" bench/preview.py --seconds 8 \
  --json "$out/preview.json"

# 5. The test suite, or the files named in GPU_CHECK_TESTS (the rest of the budget).
# shellcheck disable=SC2086
want tests && step 150 "$out/tests.txt" "$python" -m pytest -q -p no:cacheprovider ${GPU_CHECK_TESTS:-tests/}
tail -n 15 "$out/tests.txt" 2>/dev/null
note "done; files in $out: $(ls "$out" | tr '\n' ' ')"
cat "$out/summary.txt" 2>/dev/null
