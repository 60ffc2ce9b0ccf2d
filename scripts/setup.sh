#!/usr/bin/env bash
# Installs what is missing (Debian packages, npm packages) and builds. Idempotent: a second run only
# checks. Needs root for apt (CI and the README's commands run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the build, the tests and the examples use.
PKGS=(g++ make python3 pkg-config git libfuse3-dev fuse3 fio sqlite3 python3-torch tar diffutils util-linux coreutils
      libibverbs-dev librdmacm-dev ibverbs-providers rdma-core)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[setup] apt-get install ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then echo "[setup] missing packages need root: sudo $0" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

node -e 'const [a,b]=process.versions.node.split(".").map(Number); if (a<20||(a===20&&b<15)) { console.error("[setup] Node.js >= 20.15 is needed, this is "+process.version); process.exit(1) }'

# npm packages: reinstall only when the lock file changed since the last install.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "[setup] npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

# Native addon (node-gyp) and TypeScript.
if [ ! -f build/Release/cubefs_native.node ] || [ -n "$(find native binding.gyp -newer build/Release/cubefs_native.node -print -quit)" ]; then
  echo "[setup] building native addon"
  npx --no-install node-gyp rebuild --silent >/dev/null
fi
echo "[setup] compiling TypeScript"
npx --no-install tsc -p tsconfig.json
# mount(8) helper: `mount -t fuse.cubefs VOL MNT -o ...` and fstab lines run /sbin/mount.fuse.cubefs, a link
# to this checkout's scripts/mount.fuse.cubefs (which runs bin/cubefs-mount).
helper=/sbin/mount.fuse.cubefs
if [ "$(readlink "$helper" 2>/dev/null || true)" != "$PWD/scripts/mount.fuse.cubefs" ]; then
  if [ "$(id -u)" = 0 ]; then
    ln -sfn "$PWD/scripts/mount.fuse.cubefs" "$helper"
    echo "[setup] installed $helper -> $PWD/scripts/mount.fuse.cubefs"
  else
    echo "[setup] not root: $helper not installed (mount -t fuse.cubefs and fstab need it: sudo $0)"
  fi
fi

# The RDMA VM that `npm test` boots for test/rdma-vm (kernel + initramfs; ~15-35 s the first time, then a check).
bash scripts/rdma-vm/setup.sh
echo "[setup] ready"
