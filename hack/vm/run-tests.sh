#!/usr/bin/env bash
# Runs Go test packages inside a Debian kernel booted under qemu (software
# emulation), so that tests that need kernel features this machine's kernel
# lacks (IPVS) or another kernel version (eBPF on 6.1) run for real.
#
#   hack/vm/run-tests.sh [-run REGEX] [-bench REGEX] [-v] [--] PACKAGE...
#
# Each package is compiled with `go test -c` (CGO_ENABLED=0), packed with
# busybox and the kernel modules it needs into an initramfs, and run as root
# in the guest with CI=1. The verdict is read from the serial console. Exit
# status: 0 when every package passed, 1 otherwise.
#
# Environment (all optional):
#   SPOKE_VM_KERNEL    Debian kernel package (linux-image-6.1.0-56-amd64)
#   SPOKE_VM_CACHE     where the kernel package is kept (~/.cache/spoke/vm)
#   SPOKE_VM_MODULES   modules loaded in the guest, in order
#   SPOKE_VM_BINARIES  host programs copied into the guest's /opt/bin with
#                      the libraries they need (for example /usr/sbin/ip)
#   SPOKE_VM_MEMORY    guest memory in MiB (2048)
#   SPOKE_VM_CPUS      guest CPUs (2)
#   SPOKE_VM_TIMEOUT   wall-clock limit in seconds (1800)
#   SPOKE_VM_KEEP      keep the work directory when set
set -euo pipefail

kernel_pkg=${SPOKE_VM_KERNEL:-linux-image-6.1.0-56-amd64}
cache=${SPOKE_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spoke/vm}
modules=${SPOKE_VM_MODULES:-crc32c_generic veth dummy sch_ingress cls_bpf sctp nf_conntrack nf_conntrack_netlink nf_tables nft_chain_nat nft_masq nft_ct nft_reject_inet ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh}
memory=${SPOKE_VM_MEMORY:-2048}
cpus=${SPOKE_VM_CPUS:-2}
wall=${SPOKE_VM_TIMEOUT:-1800}

testflags=()
packages=()
while (($#)); do
	case $1 in
	-run | -bench | -benchtime | -count | -timeout)
		testflags+=("-test.${1#-}=$2")
		shift 2
		;;
	-v) testflags+=(-test.v) && shift ;;
	--) shift && packages+=("$@") && break ;;
	-*) echo "run-tests.sh: unknown flag $1" >&2 && exit 2 ;;
	*) packages+=("$1") && shift ;;
	esac
done
if ((${#packages[@]} == 0)); then
	echo "usage: hack/vm/run-tests.sh [-run REGEX] [-bench REGEX] [-v] PACKAGE..." >&2
	exit 2
fi
case " ${testflags[*]-} " in *" -test.timeout="*) ;; *) testflags+=(-test.timeout=25m) ;; esac

need() {
	for tool in "$@"; do
		command -v "$tool" >/dev/null || {
			echo "run-tests.sh: $tool is missing (apt-get install -y qemu-system-x86 busybox-static kmod cpio)" >&2
			exit 1
		}
	done
}
need qemu-system-x86_64 busybox depmod modprobe cpio gzip go

# The kernel package, fetched once.
mkdir -p "$cache"
deb=$(ls "$cache/${kernel_pkg}"_*.deb 2>/dev/null | head -n1 || true)
if [[ -z $deb ]]; then
	(cd "$cache" && apt-get download "$kernel_pkg")
	deb=$(ls "$cache/${kernel_pkg}"_*.deb | head -n1)
fi
kroot=$cache/${kernel_pkg}.root
if [[ ! -d $kroot ]]; then
	rm -rf "$kroot.tmp"
	dpkg -x "$deb" "$kroot.tmp"
	kver=$(ls "$kroot.tmp/lib/modules")
	depmod -b "$kroot.tmp" "$kver"
	mv "$kroot.tmp" "$kroot"
fi
kver=$(ls "$kroot/lib/modules")
vmlinuz=$kroot/boot/vmlinuz-$kver

work=$(mktemp -d "${TMPDIR:-/tmp}/spoke-vm.XXXXXX")
if [[ -z ${SPOKE_VM_KEEP:-} ]]; then
	trap 'rm -rf "$work"' EXIT
else
	echo "run-tests.sh: work directory $work"
fi
tree=$work/tree
mkdir -p "$tree"/{bin,sbin,dev,proc,sys,tmp,run,etc,opt/bin,tests,lib/modules/"$kver"}
mknod -m 600 "$tree/dev/console" c 5 1

# Test binaries, static.
names=()
for pkg in "${packages[@]}"; do
	name=$(echo "$pkg" | sed 's#^\./##; s#/\.\.\.$##; s#/$##; s#[/.]#_#g')
	CGO_ENABLED=0 go test -c -o "$tree/tests/$name.test" "$pkg"
	dir=$(go list -f '{{.Dir}}' "$pkg")
	mkdir -p "$tree/tests/$name.dir"
	if [[ -d $dir/testdata ]]; then
		cp -r "$dir/testdata" "$tree/tests/$name.dir/"
	fi
	names+=("$name")
done

# Busybox, and modules with their dependencies.
cp "$(command -v busybox)" "$tree/bin/busybox"
for m in $modules; do
	modprobe -d "$kroot" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
done | sort -u | while read -r ko; do
	rel=${ko#"$kroot"/}
	mkdir -p "$tree/$(dirname "$rel")"
	cp "$ko" "$tree/$rel"
done
cp "$kroot/lib/modules/$kver"/modules.{order,builtin} "$tree/lib/modules/$kver/" 2>/dev/null || true
depmod -b "$tree" "$kver"

# Extra host programs, each in /opt/bin under its own name.
for bin in ${SPOKE_VM_BINARIES:-}; do
	cp "$bin" "$tree/opt/bin/"
	ldd "$bin" | awk '/=>/ { print $3 } /^\t\// { print $1 }' | while read -r lib; do
		mkdir -p "$tree/$(dirname "$lib")"
		cp -L "$lib" "$tree/$lib"
	done
done

flags=$(printf '%q ' "${testflags[@]}")
cat >"$tree/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/opt/bin:/bin:/sbin HOME=/tmp TMPDIR=/tmp CI=1 SPOKE_PRIVILEGED=1 SPOKE_VM=1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /sys/fs/cgroup /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
for m in $modules; do modprobe \$m || echo "SPOKE-VM: modprobe \$m failed"; done
echo "SPOKE-VM: kernel \$(uname -r)"
for name in ${names[*]}; do
	echo "SPOKE-VM: running \$name"
	(cd /tests/\$name.dir && /tests/\$name.test $flags)
	echo "SPOKE-VM-RESULT \$name \$?"
done
echo SPOKE-VM-DONE
poweroff -f
EOF
chmod +x "$tree/init"
(cd "$tree" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.gz"

log=$work/console.log
echo "run-tests.sh: booting $kernel_pkg with ${names[*]}" >&2
set +e
timeout "$wall" qemu-system-x86_64 -accel tcg -cpu max -smp "$cpus" -m "$memory" \
	-nographic -no-reboot -kernel "$vmlinuz" -initrd "$work/initrd.gz" \
	-append "console=ttyS0 quiet panic=-1 mitigations=off" | tee "$log" | tr -d '\r'
status=${PIPESTATUS[0]}
set -e
if ((status == 124)); then
	echo "run-tests.sh: the guest did not finish within ${wall}s" >&2
fi

# The kernel conformance runs' summary lines, together.
tr -d '\r' <"$log" | grep '^conformance ' >&2 || true

failed=0
for name in "${names[@]}"; do
	rc=$(tr -d '\r' <"$log" | awk -v n="$name" '$1 == "SPOKE-VM-RESULT" && $2 == n { print $3 }')
	if [[ $rc != 0 ]]; then
		echo "run-tests.sh: FAIL $name (exit ${rc:-missing})" >&2
		failed=1
	else
		echo "run-tests.sh: ok $name ($kernel_pkg)" >&2
	fi
done
if ! tr -d '\r' <"$log" | grep -q '^SPOKE-VM-DONE'; then
	echo "run-tests.sh: the guest did not report completion" >&2
	failed=1
fi
exit $failed
