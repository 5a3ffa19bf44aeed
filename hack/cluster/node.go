package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/spoke-proxy/spoke/internal/pki"
)

// cgroupParent holds every node's cgroup, in every hierarchy.
const cgroupParent = "spoke-cluster"

// node is one kubelet and its containerd, in the node's network namespace.
type node struct {
	index      int
	name, zone string
	dir        string
	kubelet    *child
	containerd *child
}

// newNode describes node i (from 1) of a cluster whose nodes are spread
// over zones round robin: node-1 in zone-a, node-2 in zone-b, and so on.
func newNode(work string, i, zones int) *node {
	return &node{
		index: i,
		name:  fmt.Sprintf("node-%d", i),
		zone:  fmt.Sprintf("zone-%c", 'a'+(i-1)%zones),
		dir:   filepath.Join(work, fmt.Sprintf("node-%d", i)),
	}
}

func (n *node) netnsPath() string   { return filepath.Join("/run/netns", nodeNSName(n.index)) }
func (n *node) socket() string      { return filepath.Join(n.dir, "containerd", "containerd.sock") }
func (n *node) cgroupRoot() string  { return "/" + cgroupParent + "/" + n.name }
func (n *node) kubeletRoot() string { return filepath.Join(n.dir, "kubelet") }

// cgroupHierarchies lists the mounted cgroup hierarchies: every v1
// controller and the v2 (unified) one of a hybrid host.
func cgroupHierarchies() []string {
	var out []string
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, d := range dirs {
		var st unix.Statfs_t
		if unix.Statfs(d, &st) == nil && (st.Type == unix.CGROUP_SUPER_MAGIC || st.Type == unix.CGROUP2_SUPER_MAGIC) {
			out = append(out, d)
		}
	}
	return out
}

// createCgroups makes the node's cgroup root in every hierarchy, with the
// cpuset of the parent (a v1 cpuset cgroup starts empty).
func (n *node) createCgroups() error {
	for _, h := range cgroupHierarchies() {
		dir := h
		for _, part := range []string{cgroupParent, n.name} {
			parent := dir
			dir = filepath.Join(dir, part)
			if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return fmt.Errorf("creating cgroup %s: %w", dir, err)
			}
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				if b, err := os.ReadFile(filepath.Join(parent, f)); err == nil && filepath.Base(h) == "cpuset" {
					if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
						return fmt.Errorf("%s/%s: %w", dir, f, err)
					}
				}
			}
		}
	}
	return nil
}

// removeCgroups removes every cluster cgroup, deepest first; they must hold
// no process.
func removeCgroups() error {
	var errs []error
	for _, h := range cgroupHierarchies() {
		root := filepath.Join(h, cgroupParent)
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
		for _, d := range dirs {
			if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
				procs, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
				errs = append(errs, fmt.Errorf("removing cgroup %s (processes: %q): %w", d, strings.TrimSpace(string(procs)), err))
			}
		}
	}
	return errors.Join(errs...)
}

const containerdConfig = `version = 4
root = '{{.Dir}}/containerd/root'
state = '{{.Dir}}/containerd/state'
temp = '{{.Dir}}/containerd/tmp'
disabled_plugins = [
  'io.containerd.snapshotter.v1.btrfs',
  'io.containerd.snapshotter.v1.zfs',
  'io.containerd.snapshotter.v1.devmapper',
  'io.containerd.snapshotter.v1.blockfile',
  'io.containerd.snapshotter.v1.erofs',
  'io.containerd.differ.v1.erofs',
  'io.containerd.nri.v1.nri',
  'io.containerd.tracing.processor.v1.otlp',
  'io.containerd.internal.v1.tracing',
]

[plugins]
  # Config version 4 takes the server addresses here (a top-level [grpc] is
  # ignored).
  [plugins.'io.containerd.server.v1.grpc']
    address = '{{.Dir}}/containerd/containerd.sock'
  [plugins.'io.containerd.server.v1.ttrpc']
    address = '{{.Dir}}/containerd/containerd.sock.ttrpc'
  [plugins.'io.containerd.server.v1.debug']
    address = ''
  [plugins.'io.containerd.server.v1.metrics']
    address = ''
  # Shim sockets default to /run/containerd/s.
  [plugins.'io.containerd.shim.v1.manager']
    socket_dir = '{{.Dir}}/s'
  [plugins.'io.containerd.internal.v1.opt']
    path = '{{.Dir}}/containerd/opt'
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '{{.Pause}}'
  [plugins.'io.containerd.cri.v1.runtime']
    # No CAP_SYS_RESOURCE here: never ask runc to lower oom_score_adj.
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    tolerate_missing_hugetlb_controller = true
    disable_hugetlb_controller = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '{{.Runc}}'
          Root = '{{.Dir}}/containerd/runc'
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['{{.CNI}}']
      conf_dir = '{{.Dir}}/cni/net.d'
      max_conf_num = 1
  [plugins.'io.containerd.grpc.v1.cri']
    disable_tcp_service = true
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
`

const cniConfig = `{
  "cniVersion": "1.0.0",
  "name": "spoke-cluster",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cbr0",
      "isGateway": true,
      "isDefaultGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "{{.PodCIDR}}"}]],
        "dataDir": "{{.Dir}}/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`

const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This host has cgroup v1 and PID 1 is not systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: {{.CgroupRoot}}
cgroupsPerQOS: true
failSwapOn: false
# Only read the kernel tunables kubelet wants (they are files of its own in
# its mount namespace): never change them on the machine.
protectKernelDefaults: true
containerRuntimeEndpoint: unix://{{.Socket}}
address: {{.NodeIP}}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {{.CA}}
authorization:
  mode: Webhook
staticPodPath: ""
resolvConf: ""
clusterDNS: [10.96.0.10]
clusterDomain: cluster.local
podLogsDir: {{.Dir}}/podlogs
serializeImagePulls: true
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
makeIPTablesUtilChains: false
maxPods: 110
`

// fakeSysctls are the kernel tunables kubelet checks, with the values it
// wants; kubeletNS mounts files holding them over /proc/sys in kubelet's
// own mount namespace.
var fakeSysctls = map[string]string{
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
}

// kubeletNSCommand is the subcommand that runs kubelet inside its mount
// namespace (made by unshare -m --propagation unchanged).
const kubeletNSCommand = "kubelet-ns"

// kubeletNS prepares kubelet's private mount namespace and execs kubelet:
// the kernel tunables it checks become files of its own, and its hard-coded
// host paths (/var/log/containers, /var/lib/kubelet/device-plugins) are the
// node's. args: NODEDIR KUBELET [ARGS...].
func kubeletNS(args []string) error {
	if len(args) < 2 {
		return errors.New("usage: kubelet-ns NODEDIR KUBELET [ARGS...]")
	}
	dir := args[0]
	fake := filepath.Join(dir, "fakesysctl")
	for _, d := range []string{fake, filepath.Join(dir, "varlog"), filepath.Join(dir, "kubelet")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	for key, value := range fakeSysctls {
		f := filepath.Join(fake, strings.ReplaceAll(key, "/", "_"))
		if err := os.WriteFile(f, []byte(value+"\n"), 0o644); err != nil {
			return err
		}
		if err := unix.Mount(f, "/proc/sys/"+key, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("mounting over /proc/sys/%s: %w", key, err)
		}
	}
	if err := unix.Mount(filepath.Join(dir, "varlog"), "/var/log", "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("mounting /var/log: %w", err)
	}
	if err := unix.Mount(filepath.Join(dir, "kubelet"), "/var/lib/kubelet", "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("mounting /var/lib/kubelet: %w", err)
	}
	return syscall.Exec(args[1], args[1:], os.Environ())
}

// hostnameCommand is the subcommand that names the node in its own UTS
// namespace (made by unshare -u) and execs containerd: hostNetwork pods share
// their node's UTS namespace, and the e2e tests expect their hostname to be
// the node's name, not the machine's.
const hostnameCommand = "hostname-exec"

// hostnameExec sets the hostname and execs the command. args: NAME COMMAND
// [ARGS...].
func hostnameExec(args []string) error {
	if len(args) < 2 {
		return errors.New("usage: hostname-exec NAME COMMAND [ARGS...]")
	}
	if err := unix.Sethostname([]byte(args[0])); err != nil {
		return fmt.Errorf("setting the hostname: %w", err)
	}
	return syscall.Exec(args[1], args[1:], os.Environ())
}

// startContainerd writes the node's containerd and CNI configuration and
// starts containerd in the node's network namespace and a UTS namespace
// named after the node.
func (n *node) startContainerd(ctx context.Context, c *cluster) error {
	data := map[string]string{
		"Dir": n.dir, "Pause": pauseImage, "Runc": c.bins.runc, "CNI": c.bins.cniDir,
		"PodCIDR": podCIDR(n.index).String(),
	}
	if err := writeTemplate(filepath.Join(n.dir, "containerd.toml"), containerdConfig, data); err != nil {
		return err
	}
	if err := writeTemplate(filepath.Join(n.dir, "cni", "net.d", "10-spoke-cluster.conflist"), cniConfig, data); err != nil {
		return err
	}
	binDir := filepath.Dir(c.bins.containerd)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	p, err := startProcess("containerd "+n.name, filepath.Join(c.logs, "containerd-"+n.name+".log"),
		[]string{"PATH=" + binDir + ":" + os.Getenv("PATH")},
		"nsenter", "--net="+n.netnsPath(), "unshare", "-u",
		self, hostnameCommand, n.name, c.bins.containerd, "--config", filepath.Join(n.dir, "containerd.toml"))
	if err != nil {
		return err
	}
	n.containerd = p
	return waitFor(ctx, 30*time.Second, "containerd of "+n.name, func() bool {
		_, err := os.Stat(n.socket())
		return err == nil
	})
}

// importImages imports image tarballs into the node's containerd.
func (n *node) importImages(ctx context.Context, c *cluster, tars []string) error {
	ctr := filepath.Join(filepath.Dir(c.bins.containerd), "ctr")
	for _, t := range tars {
		out, err := exec.CommandContext(ctx, ctr, "-a", n.socket(), "-n", "k8s.io", "images", "import", "--platform", "linux/amd64", t).CombinedOutput()
		if err != nil {
			return fmt.Errorf("importing %s into %s: %w\n%s", t, n.name, err, out)
		}
	}
	return nil
}

// startKubelet writes the node's kubelet configuration and credentials and
// starts kubelet in the node's network namespace and a mount namespace of
// its own.
func (n *node) startKubelet(c *cluster) error {
	data := map[string]string{
		"CgroupRoot": n.cgroupRoot(), "Socket": n.socket(), "NodeIP": nodeAddr(n.index).String(),
		"CA": c.caFile, "Dir": n.dir,
	}
	if err := writeTemplate(filepath.Join(n.dir, "kubelet.yaml"), kubeletConfig, data); err != nil {
		return err
	}
	crt, key, err := c.ca.WritePair(n.dir, "kubelet-client", pki.Spec{CN: "system:node:" + n.name, Orgs: []string{"system:nodes"}})
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(n.dir, "kubeconfig")
	if err := c.writeKubeconfig(kubeconfig, crt, key); err != nil {
		return err
	}
	// kubelet's root is a shared mount: the volumes kubelet mounts in its
	// own namespace reach containerd's.
	root := n.kubeletRoot()
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(root, root, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mounting %s: %w", root, err)
	}
	if err := unix.Mount("", root, "", unix.MS_SHARED, ""); err != nil {
		return fmt.Errorf("sharing %s: %w", root, err)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	p, err := startProcess("kubelet "+n.name, filepath.Join(c.logs, "kubelet-"+n.name+".log"), nil,
		"nsenter", "--net="+n.netnsPath(), "unshare", "-m", "--propagation", "unchanged",
		self, kubeletNSCommand, n.dir, c.bins.kubelet,
		"--config", filepath.Join(n.dir, "kubelet.yaml"),
		"--kubeconfig", kubeconfig,
		"--root-dir", root,
		"--cert-dir", filepath.Join(root, "pki"),
		"--hostname-override", n.name,
		"--node-ip", nodeAddr(n.index).String(),
		"--node-labels", "topology.kubernetes.io/zone="+n.zone,
		"--v=1")
	if err != nil {
		return err
	}
	n.kubelet = p
	return nil
}

// stop stops kubelet, removes every pod sandbox (so that CNI and the
// mounts are undone), and stops containerd and any shim it left.
func (n *node) stop(ctx context.Context, c *cluster) error {
	var errs []error
	errs = append(errs, n.kubelet.stop(20*time.Second))
	if n.containerd != nil && !n.containerd.Exited() {
		cmd := exec.CommandContext(ctx, c.bins.crictl, "-r", "unix://"+n.socket(), "--timeout", "30s", "rmp", "--force", "--all")
		if out, err := cmd.CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("removing %s's pods: %w\n%s", n.name, err, out))
		}
	}
	errs = append(errs, n.containerd.stop(20*time.Second))
	errs = append(errs, killShims(filepath.Join(filepath.Dir(c.bins.containerd), "containerd-shim-runc-v2"), n.socket()))
	return errors.Join(errs...)
}

// killShims kills the shims, started from binary for the containerd at
// socket, that outlived it.
func killShims(binary, socket string) error {
	procs, _ := filepath.Glob("/proc/[0-9]*")
	var errs []error
	for _, p := range procs {
		exe, err := os.Readlink(filepath.Join(p, "exe"))
		if err != nil || exe != binary {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join(p, "cmdline"))
		if !strings.Contains(string(cmdline), socket) {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(filepath.Base(p), "%d", &pid); err == nil {
			errs = append(errs, syscall.Kill(pid, syscall.SIGKILL))
		}
	}
	return errors.Join(errs...)
}
