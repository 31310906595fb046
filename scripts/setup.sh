#!/usr/bin/env bash
# One-time (and idempotent) set-up behind `make run` and `make test`:
#   1. Debian packages the platform needs (BCC for eBPF, kernel headers, iproute2, iptables, iperf3,
#      prometheus: promtool and the server for the metrics and alert-rule tests),
#      installed with apt when running as root; otherwise the missing ones are listed with the command.
#   2. Kernel headers for BCC when the running kernel ships none (/lib/modules/$(uname -r)/build).
#   3. tracefs mounted (eBPF tracepoints).
#   4. The virtualenv .venv: pip pinned by hash (requirements/pip.txt), then requirements/lock.txt in
#      pip's hash-checking mode (--require-hashes: every package pinned, every file checked against the
#      lock's sha256s; scripts/lock_hashes.py regenerates them), then the package (editable), plus a .pth
#      that makes Debian's `bcc` importable and nothing else of Debian's dist-packages, and a .pth that
#      backports a Ray fix the pinned Ray lacks into every process of the venv (x0tta6bl4._ray_backports).
# A stamp file makes the second run take well under a second when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.x0tta6bl4-setup
DEBIAN_BCC=/usr/lib/python3/dist-packages/bcc
APT_PACKAGES=(python3-bpfcc bpfcc-tools iproute2 iptables iperf3 linux-headers-amd64 prometheus redis-server)
KREL=$(uname -r)

say() { printf '[setup] %s\n' "$*" >&2; }

want_hash() {
  { cat pyproject.toml requirements/*.txt scripts/setup.sh; echo "$KREL"; } | sha256sum | cut -d' ' -f1
}

missing_apt() {
  local pkg missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  echo "${missing[@]:-}"
}

system_setup() {
  local missing
  missing=$(missing_apt)
  if [ -n "$missing" ]; then
    if [ "$(id -u)" -eq 0 ]; then
      say "installing Debian packages: $missing"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    else
      say "missing Debian packages: $missing"
      say "  fix: sudo apt-get update && sudo apt-get install -y $missing"
      say "  (without them eBPF telemetry falls back to procfs; 'x0tta6bl4 doctor' explains)"
    fi
  fi
  # BCC compiles against /lib/modules/$KREL/build and .../source. A kernel without its own
  # headers (e.g. a VM kernel) uses Debian's newest installed headers; the matching common
  # tree is the one the arch tree's Makefile includes (BCC needs both links).
  if [ ! -e "/lib/modules/$KREL/build/include/linux/kconfig.h" ] && [ ! -e "/lib/modules/$KREL/source/include/linux/kconfig.h" ]; then
    local build common
    build=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
    common=""
    [ -n "$build" ] && common=$(sed -n 's|^include \(.*\)/Makefile$|\1|p' "$build/Makefile" | head -n 1)
    if [ -n "$build" ] && [ -n "$common" ] && [ "$(id -u)" -eq 0 ]; then
      say "linking kernel headers $build (+ $common) for $KREL (the running kernel ships none)"
      mkdir -p "/lib/modules/$KREL"
      ln -sfn "$build" "/lib/modules/$KREL/build"
      ln -sfn "$common" "/lib/modules/$KREL/source"
    elif [ -n "$build" ]; then
      say "kernel $KREL has no headers; fix: sudo ln -sfn $build /lib/modules/$KREL/build && sudo ln -sfn $common /lib/modules/$KREL/source"
    fi
  fi
  if ! mountpoint -q /sys/kernel/tracing && [ "$(id -u)" -eq 0 ]; then
    mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || say "could not mount tracefs (eBPF will fall back to procfs)"
  fi
}

python_setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$PY" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --require-hashes -r requirements/pip.txt
  say "installing pinned Python dependencies (first run takes a few minutes)"
  "$VENV/bin/python" -m pip install -q --require-hashes -r requirements/lock.txt
  # No build isolation: the editable build uses the lock's setuptools, not an unpinned download.
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
  bcc_path
  ray_backports
}

# Ray 2.55's metrics agent can deadlock against a scrape (ray-project/ray#64946, fixed in 2.57; Flower
# 1.42 pins 2.55.1). Every process of the venv, Ray's agents included, installs the fix's backport,
# which patches Ray's recorder module when it is imported (x0tta6bl4/_ray_backports.py). Sorted after
# the editable install's .pth, which puts the package on the path.
ray_backports() {
  local site
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "import x0tta6bl4._ray_backports as b; b.install()" > "$site/zz_x0tta6bl4_ray_backports.pth"
}

# Debian's BCC module (python3-bpfcc) and nothing else from /usr/lib/python3/dist-packages (Debian's
# numpy, yaml, cryptography, apt, ... stay out): .venv/debian-bcc holds one symlink, bcc -> Debian's
# bcc, and a .pth lists that directory only, after the venv's own packages (zz_ sorts last). The link
# is made even before python3-bpfcc is installed: it starts resolving once the package is there.
bcc_path() {
  local site dir
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  dir="$(cd "$VENV" && pwd)/debian-bcc"
  rm -rf "$dir"
  mkdir -p "$dir"
  ln -s "$DEBIAN_BCC" "$dir/bcc"
  echo "$dir" > "$site/zz_debian_bcc.pth"
}

system_setup
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(want_hash)" ] && [ -x "$VENV/bin/x0tta6bl4" ]; then
  exit 0
fi
python_setup
want_hash > "$STAMP"
say "ready: $VENV/bin/x0tta6bl4"
