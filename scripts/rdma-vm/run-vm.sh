#!/bin/bash
# Boots the RDMA test VM (adapted from shared/tools/rdma-vm) and runs one command in it.
#
#   run-vm.sh [--rw DIR]... [-e NAME[=VAL]]... [--netdev dummy0|lo] [--mem MB] [--smp N] [--accel kvm|tcg]
#             [--timeout S] [--debug] [--] COMMAND...          (COMMAND runs under /bin/sh inside the VM)
#
# The VM's root is the host's / (read-only 9p under a tmpfs overlay); --rw DIR shares DIR read-write at the
# same path. The command runs in the host's cwd with a clean environment (HOME, PATH, TERM, RXE_DEV=rxe0,
# RXE_NETDEV, RXE_IP=192.0.2.1) plus the -e variables (host value when no =VAL). Its output streams here.
# Exit status: the command's; 125 when the VM failed or timed out; 2 when setup.sh has not run.
set -uo pipefail
DIR=${CUBEFS_RDMA_VM_DIR:-/tmp/cubefs-rdma-vm}
RW=() ENVS=() NETDEV=dummy0 MEM=2048 SMP=$(nproc) ACCEL=auto TIMEOUT=1800 DEBUG=0
while (($#)); do
  case $1 in
    --rw) RW+=("$(realpath "$2")"); shift 2;;
    -e|--env) ENVS+=("$2"); shift 2;;
    --netdev) NETDEV=$2; shift 2;;
    --mem) MEM=$2; shift 2;;
    --smp) SMP=$2; shift 2;;
    --accel) ACCEL=$2; shift 2;;
    --timeout) TIMEOUT=$2; shift 2;;
    --debug) DEBUG=1; shift;;
    --) shift; break;;
    -*) echo "run-vm.sh: unknown option $1" >&2; exit 2;;
    *) break;;
  esac
done
(($#)) || { sed -n '2,11p' "$0" >&2; exit 2; }
command -v qemu-system-x86_64 >/dev/null || { echo "run-vm.sh: qemu-system-x86_64 is not installed: run scripts/setup.sh" >&2; exit 2; }
[ -f "$DIR/kernel/vmlinuz" ] && [ -f "$DIR/kernel/initrd.gz" ] || { echo "run-vm.sh: no VM kernel in $DIR/kernel: run scripts/setup.sh (or scripts/rdma-vm/setup.sh)" >&2; exit 2; }

mkdir -p "$DIR/runs"
RUN=$(mktemp -d "$DIR/runs/run.XXXXXX")
trap 'rm -rf "$RUN"' EXIT
printf '%s\n' "$*" > "$RUN/cmd"
pwd > "$RUN/cwd"
for e in "${ENVS[@]}"; do
  n=${e%%=*}; if [[ $e == *=* ]]; then v=${e#*=}; else v=${!n-}; fi
  printf "export %s='%s'\n" "$n" "$(printf '%s' "$v" | sed "s/'/'\\\\''/g")" >> "$RUN/env"
done
: > "$RUN/rw.list"

# KVM only where the CPU shows vmx/svm: a /dev/kvm without them accepts a VM but hangs a stock kernel.
if [ "$ACCEL" = auto ]; then
  if [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then ACCEL=kvm; else ACCEL=tcg; fi
fi
# Under TCG a CPU model without AVX/PCLMUL runs rxe ~2.5x faster than -cpu max.
if [ "$ACCEL" = kvm ]; then CPU=(-accel kvm -cpu host); else CPU=(-accel tcg,thread=multi,tb-size=512 -cpu Nehalem-v2,-spec-ctrl); fi
KERNEL=$DIR/kernel/vmlinux; [ -f "$KERNEL" ] || KERNEL=$DIR/kernel/vmlinuz
ARGS=(-M q35 "${CPU[@]}" -m "$MEM" -smp "$SMP" -nodefaults -no-user-config -display none -no-reboot
      -kernel "$KERNEL" -initrd "$DIR/kernel/initrd.gz"
      -chardev stdio,id=con,signal=off -serial chardev:con -device virtio-rng-pci
      -fsdev local,id=fsroot,path=/,security_model=none,readonly=on,multidevs=remap
      -device virtio-9p-pci,fsdev=fsroot,mount_tag=hostroot
      -fsdev local,id=fsrun,path="$RUN",security_model=none
      -device virtio-9p-pci,fsdev=fsrun,mount_tag=run)
i=0
for d in "${RW[@]}"; do
  echo "$d" >> "$RUN/rw.list"
  ARGS+=(-fsdev local,id=fsrw$i,path="$d",security_model=none,multidevs=remap -device virtio-9p-pci,fsdev=fsrw$i,mount_tag=rw$i)
  i=$((i+1))
done
if ((DEBUG)); then KLOG="loglevel=7"; else KLOG="quiet loglevel=0"; fi
timeout --foreground -k 5 "$TIMEOUT" qemu-system-x86_64 "${ARGS[@]}" \
  -append "console=ttyS0 $KLOG panic=-1 mitigations=off rxevm_run=$RUN rxevm_netdev=$NETDEV rxevm_debug=$DEBUG" </dev/null
qrc=$?
if [ -f "$RUN/rc" ]; then exit "$(cat "$RUN/rc")"; fi
if [ "$qrc" = 124 ]; then echo "run-vm.sh: the VM timed out after $TIMEOUT s" >&2; else echo "run-vm.sh: the VM exited (qemu status $qrc) without a result" >&2; fi
exit 125
