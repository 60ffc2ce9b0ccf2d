#!/bin/bash
# Prepares the RDMA test VM (adapted from shared/tools/rdma-vm): Debian's stock kernel (it ships rdma_rxe)
# and a small initramfs whose /init (init.sh) mounts the host's root read-only with a tmpfs overlay and
# makes a Soft-RoCE device rxe0. Host packages: qemu, busybox-static, rdma-core userspace.
# Idempotent (a second run only checks); ~15 s from scratch; needs root, apt and Debian's mirror.
# Output: $CUBEFS_RDMA_VM_DIR (default /tmp/cubefs-rdma-vm)/kernel/{vmlinuz,vmlinux,initrd.gz}.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIR=${CUBEFS_RDMA_VM_DIR:-/tmp/cubefs-rdma-vm}
mkdir -p "$DIR"
cd "$DIR"
t0=$(date +%s)

need=(qemu-system-x86 busybox-static xz-utils libibverbs1 librdmacm1 ibverbs-providers ibverbs-utils
      rdmacm-utils perftest iproute2)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[rdma-vm] apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- kernel: linux-image-amd64's current package, unpacked (modules stay in kroot/) ----
if [ ! -f kernel/vmlinuz ]; then
  rm -rf debs kroot kernel; mkdir -p debs kernel
  ( cd debs
    apt-get download linux-image-amd64 2>/dev/null
    KPKG=$(dpkg-deb -f linux-image-amd64_*.deb Depends | grep -o 'linux-image-[0-9][^ ,]*-amd64' | head -1)
    echo "[rdma-vm] kernel package: $KPKG"
    apt-get download "$KPKG" 2>/dev/null )
  dpkg-deb -x "$(ls debs/linux-image-[0-9]*.deb)" kroot
  KV=$(ls kroot/lib/modules)
  cp "kroot/boot/vmlinuz-$KV" kernel/vmlinuz
  echo "$KV" > kernel/version
  busybox depmod -b "$DIR/kroot" "$KV"
  rm -rf debs
fi
# The uncompressed ELF kernel boots through QEMU's PVH entry, skipping ~5 s of firmware + xz under TCG.
if [ ! -f kernel/vmlinux ]; then
  off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' kernel/vmlinuz | head -1 | cut -d: -f1)
  if [ -n "$off" ]; then
    tail -c +$((off + 1)) kernel/vmlinuz | xz -dc > kernel/vmlinux.tmp 2>/dev/null || true  # trailing data is expected
    if head -c 4 kernel/vmlinux.tmp | grep -q ELF; then mv kernel/vmlinux.tmp kernel/vmlinux; else rm -f kernel/vmlinux.tmp; fi
  fi
fi
KV=$(cat kernel/version)

# ---- initramfs: static busybox, init.sh, and the modules with their dependencies ----
if [ ! -f kernel/initrd.gz ] || [ "$HERE/init.sh" -nt kernel/initrd.gz ] || [ "$HERE/setup.sh" -nt kernel/initrd.gz ]; then
  MODS="virtio_pci 9pnet_virtio 9p overlay fuse crc32_generic crc32-pclmul crc32c_generic rdma_rxe rdma_ucm ib_umad dummy"
  MD=kroot/lib/modules/$KV
  rm -rf initramfs; mkdir -p initramfs/{bin,dev,proc,sys,newroot,run,tmp} "initramfs/lib/modules/$KV"
  cp /bin/busybox initramfs/bin/busybox
  declare -A seen=()
  add_mod() {
    local line path d
    line=$(grep -E "(^|/)$1\.ko(\.xz)?:" "$MD/modules.dep") || { echo "[rdma-vm] module $1 not found" >&2; exit 1; }
    path=${line%%:*}
    [ -n "${seen[$path]:-}" ] && return 0
    seen[$path]=1
    mkdir -p "initramfs/lib/modules/$KV/$(dirname "$path")"
    cp "$MD/$path" "initramfs/lib/modules/$KV/$path"
    for d in ${line#*:}; do add_mod "$(basename "${d%.xz}" .ko)"; done
  }
  for m in $MODS; do add_mod "$m"; done
  cp "$MD"/modules.builtin "$MD"/modules.order "initramfs/lib/modules/$KV/"
  busybox depmod -b "$DIR/initramfs" "$KV"
  cp "$HERE/init.sh" initramfs/init; chmod +x initramfs/init
  ( cd initramfs && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > ../kernel/initrd.gz )
  echo "[rdma-vm] initramfs: $(du -h kernel/initrd.gz | cut -f1), ${#seen[@]} modules"
fi
echo "[rdma-vm] ready in $(( $(date +%s) - t0 )) s: kernel $KV in $DIR/kernel"
