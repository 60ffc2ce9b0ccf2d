#!/bin/busybox sh
# /init of the RDMA test VM (adapted from shared/tools/rdma-vm). Kernel parameters arrive as variables:
#   rxevm_run=<host dir>  the per-run directory (9p tag "run"): cmd, cwd, env, rw.list in; rc out
#   rxevm_netdev=dummy0|lo  the netdev under rxe0 (rdma_cm needs dummy0)
#   rxevm_debug=1  verbose
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
log() { [ "${rxevm_debug:-0}" = 1 ] && echo "[init] $*"; return 0; }
die() { echo "[init] FATAL: $*"; poweroff -f; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
stty -onlcr 2>/dev/null
modprobe -a virtio_pci 9pnet_virtio 9p overlay fuse || die "modprobe 9p/overlay/fuse failed"

# The host's root read-only, under a tmpfs layer: writes outside the --rw shares stay in the VM.
mkdir -p /lower /upper
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose hostroot /lower || die "9p mount of the host root failed"
mount -t tmpfs -o size=50% tmpfs /upper
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot || die "overlay mount failed"
R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm; mount -t devpts devpts $R/dev/pts; mount -t tmpfs tmpfs $R/dev/shm
mount -t tmpfs tmpfs $R/run
RUN=${rxevm_run:?}
mkdir -p $R$RUN
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 run $R$RUN || die "9p mount of the run dir failed"
i=0
while read -r p; do
  [ -n "$p" ] || continue
  mkdir -p "$R$p"
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 rw$i "$R$p" || die "9p mount of $p failed"
  log "rw share $p"
  i=$((i+1))
done < $R$RUN/rw.list

# Soft-RoCE on a VM-internal interface (the VM has no NIC: nothing leaves it).
modprobe crc32-pclmul 2>/dev/null
modprobe -a crc32_generic rdma_rxe rdma_ucm ib_umad || die "modprobe rdma_rxe failed"
ip link set lo up
ND=${rxevm_netdev:-dummy0}
if [ "$ND" = dummy0 ]; then
  modprobe dummy numdummies=0 || die "modprobe dummy failed"
  ip link add dummy0 type dummy
  ip addr add 192.0.2.1/24 dev dummy0
  ip link set dummy0 mtu 9000
  ip link set dummy0 up
fi
chroot $R /usr/bin/rdma link add rxe0 type rxe netdev "$ND" || die "rdma link add rxe0 failed"
log "uptime before the command: $(cut -d' ' -f1 /proc/uptime)"

CWD=$(cat $R$RUN/cwd 2>/dev/null || echo /)
chroot $R /usr/bin/env -i HOME=/root TERM=dumb PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  RXE_DEV=rxe0 RXE_NETDEV="$ND" RXE_IP=$( [ "$ND" = lo ] && echo 127.0.0.1 || echo 192.0.2.1 ) \
  /bin/sh -c 'cd "$1" 2>/dev/null || cd /; [ -f "$2/env" ] && . "$2/env"; exec /bin/sh "$2/cmd"' rxevm "$CWD" "$RUN" \
  </dev/null
echo $? > $R$RUN/rc
sync
poweroff -f
