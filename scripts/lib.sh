# Shared by scripts/setup.sh and scripts/check_torch_compat.sh (source it; bash only).
# step NAME CMD...: run CMD, print "[TAG] NAME: done in Ns" (TAG from $STEP_TAG).
# build_mmcv VENV: build mmcv 2.1.0 with CPU ops against VENV's torch, with a progress line.

STEP_TAG=${STEP_TAG:-setup}

step() {
  local name=$1 start=$SECONDS
  shift
  echo "[$STEP_TAG] $name"
  "$@"
  echo "[$STEP_TAG] $name: done in $((SECONDS - start)) s"
}

# have VENV SPEC...: every SPEC (NAME, or NAME==VERSION; local versions such as 2.13.0+cpu
# count as 2.13.0) is installed in VENV.
have() {
  local venv=$1
  shift
  [ -x "$venv/bin/python" ] || return 1
  "$venv/bin/python" - "$@" <<'PYEOF'
import sys
from importlib.metadata import PackageNotFoundError, version

for spec in sys.argv[1:]:
    name, _, want = spec.partition("==")
    try:
        got = version(name)
    except PackageNotFoundError:
        sys.exit(1)
    if want and got.split("+")[0] != want:
        sys.exit(1)
PYEOF
}

# mmcv_ops_ok VENV: mmcv's compiled ops import (run outside the repo).
mmcv_ops_ok() {
  local python
  python=$(cd "$1" && pwd)/bin/python
  (cd /tmp && "$python" -c 'import mmcv.ops; from mmcv.ops import nms' >/dev/null 2>&1)
}

_mmcv_sources() {  # the C++ files mmcv's setup.py compiles for a CPU build, once unpacked
  local src
  src=$(find "$1" -maxdepth 3 -type d -path '*/mmcv/ops/csrc/pytorch' 2>/dev/null | head -1)
  if [ -n "$src" ]; then
    find "$src" "$src/cpu" -maxdepth 1 -name '*.cpp' | wc -l
  else
    echo 77  # mmcv 2.1.0: csrc/pytorch/*.cpp + csrc/pytorch/cpu/*.cpp
  fi
}

# build_mmcv VENV [PIP_ARGS...]: extra pip arguments, e.g. constraints or --no-cache-dir.
build_mmcv() {
  local venv=$1 log="$1/mmcv-build.log" tmp="$1/.mmcv-build-tmp" pid done total
  local tty=0 last=0 start=$SECONDS bin
  shift
  bin=$(cd "$venv" && pwd)/bin
  [ -t 1 ] && tty=1
  rm -rf "$tmp" && mkdir -p "$tmp"
  echo "[$STEP_TAG] building mmcv 2.1.0 with CPU ops (about 11 min on 2 cores the first time," \
       "seconds when pip has the wheel cached); log: $log"
  # the venv's bin/ first on PATH: torch's cpp_extension finds ninja there (parallel jobs).
  # With FORCE_CUDA=0 mmcv's setup.py builds a CPU-only extension; where some nvcc is on PATH,
  # torch's "No CUDA runtime is found, using CUDA_HOME=..." notice is harmless.
  PATH="$bin:$PATH" TMPDIR="$tmp" MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} \
    "$venv/bin/python" -m pip install -v --disable-pip-version-check --no-build-isolation \
    "$@" "mmcv==2.1.0" >"$log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 5
    done=$(grep -cE '\.cpp -o |\[[0-9]+/[0-9]+\] .*\.cpp' "$log" 2>/dev/null || true)
    total=$(_mmcv_sources "$tmp")
    local line="[$STEP_TAG] mmcv: ${done:-0}/$total sources compiled, $((SECONDS - start)) s"
    if [ "$tty" = 1 ]; then
      printf '\r%s' "$line"
    elif [ $((SECONDS - last)) -ge 30 ]; then
      echo "$line"
      last=$SECONDS
    fi
  done
  [ "$tty" = 1 ] && echo
  if ! wait "$pid" || ! mmcv_ops_ok "$venv"; then
    echo "[$STEP_TAG] building mmcv failed (or mmcv.ops does not import); the last lines of $log:" >&2
    tail -n 30 "$log" >&2
    echo "[$STEP_TAG] the whole log: $log" >&2
    rm -rf "$tmp"
    return 1
  fi
  rm -rf "$tmp"
}
