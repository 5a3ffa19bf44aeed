// Command cluster runs a real Kubernetes cluster on this machine with Spoke
// as its only service proxy: etcd, kube-apiserver, kube-controller-manager
// and kube-scheduler on the host, and two (or more) nodes, each a network
// namespace with its own containerd and kubelet, labelled with a zone of its
// own. Everything is built from Go modules (cached under ~/.cache/spoke) and
// every image is made locally: nothing is pulled. Spoke is deployed from
// deploy/ with kustomize (hack/cluster/overlay), with TLS and agent
// authentication on, and CoreDNS runs behind the kube-dns ClusterIP that
// Spoke serves. There is no kube-proxy.
//
// Once every node, Spoke's Deployment and DaemonSet and CoreDNS are Ready it
// prints one line,
//
//	READY kubeconfig=PATH nodes=N
//
// and runs until SIGINT or SIGTERM, then removes everything it made: no
// process, namespace, mount, cgroup or bridge is left, and no kernel
// setting is changed (kubelet's kernel tunables are files of its own).
//
// With -check it instead checks, once ready, that a pod on node-1 reaches by
// DNS name a ClusterIP service whose only backend is on node-2, and that the
// service's NodePort answers from the host; it then cleans up and exits 0
// or 1.
//
// It runs as root, one at a time on a machine (make cluster holds a lock):
// its names and addresses are fixed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/spoke-proxy/spoke/internal/kubeapi"
	"github.com/spoke-proxy/spoke/internal/pki"
)

// workDir holds everything the cluster writes; the overlay's hostPath
// volumes name folders in it.
const workDir = "/run/spoke-cluster"

func main() {
	if len(os.Args) > 1 && os.Args[1] == kubeletNSCommand {
		if err := kubeletNS(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "kubelet-ns:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == hostnameCommand {
		if err := hostnameExec(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "hostname-exec:", err)
			os.Exit(1)
		}
		return
	}
	nodes := flag.Int("nodes", 2, "number of nodes")
	zones := flag.Int("zones", 0, "number of zones (zone-a, zone-b, ...) the nodes are spread over, round robin; 0: a zone per node")
	check := flag.Bool("check", false, "check DNS, a cross-node ClusterIP and a NodePort once ready, clean up and exit 0 or 1")
	keep := flag.Bool("keep-logs", false, "keep "+workDir+"/logs after cleaning up")
	timeout := flag.Duration("ready-timeout", 5*time.Minute, "how long the cluster may take to become ready once built")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if *zones <= 0 || *zones > *nodes {
		*zones = *nodes
	}
	if err := run(*nodes, *zones, *check, *keep, *timeout, log); err != nil {
		log.Error("cluster failed", "err", err)
		os.Exit(1)
	}
}

// cluster is everything run starts, in the order it is started.
type cluster struct {
	log        *slog.Logger
	repo, work string
	logs       string
	nodes      int
	zones      int
	bins       binaries
	ca         *pki.CA
	caFile     string
	kubeconfig string
	api        *kubeapi.Server
	apiPort    string
	kcm, sched *child
	nodeList   []*node

	stopForwarders    context.CancelFunc
	madeVarLibKubelet bool
	ipForward         string
}

func run(nodes, zones int, check, keep bool, readyTimeout time.Duration, log *slog.Logger) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("run as root: nodes are network namespaces with their own kubelet and containerd")
	}
	if nodes < 2 || nodes > 26 {
		return errors.New("-nodes must be between 2 and 26")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	repo, err := repoRoot()
	if err != nil {
		return err
	}
	c := &cluster{log: log, repo: repo, work: workDir, logs: filepath.Join(workDir, "logs"), nodes: nodes, zones: zones}
	if err := c.cleanup(false); err != nil {
		return fmt.Errorf("removing what an earlier run left: %w", err)
	}
	if c.bins, err = buildAll(ctx, log); err != nil {
		return err
	}
	defer func() {
		if cerr := c.cleanup(keep); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleaning up: %w", cerr))
		} else {
			log.Info("cleaned up")
		}
	}()
	start := time.Now()
	if err := c.up(ctx); err != nil {
		return err
	}
	if err := c.waitReady(ctx, readyTimeout); err != nil {
		return err
	}
	log.Info("cluster ready", "took", time.Since(start).Round(time.Millisecond))
	if check {
		return c.check(ctx)
	}
	log.Info("kubectl for this cluster", "path", filepath.Join(c.work, "kubectl"))
	fmt.Printf("READY kubeconfig=%s nodes=%d\n", c.kubeconfig, nodes)
	<-ctx.Done()
	log.Info("stopping")
	return nil
}

// up starts the control plane and the nodes and deploys Spoke and CoreDNS.
func (c *cluster) up(ctx context.Context) error {
	for _, d := range []string{c.logs, filepath.Join(c.work, "images"), filepath.Join(c.work, "state"), filepath.Join(c.work, "bpf")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		return err
	}
	c.ipForward = strings.TrimSpace(string(b))
	imageDir := filepath.Join(c.work, "images")
	tars, err := clusterImages(ctx, c.repo, imageDir, c.bins)
	if err != nil {
		return err
	}
	spokeTars, err := spokeImages(c.repo)
	if err != nil {
		return err
	}
	if err := buildNetwork(c.nodes); err != nil {
		return err
	}
	if err := c.startControlPlane(ctx); err != nil {
		return err
	}
	// kubectl next to the kubeconfig, for users of the cluster.
	wrapper := fmt.Sprintf("#!/bin/sh\nexec %s --kubeconfig %s \"$@\"\n", c.bins.kubectl, c.kubeconfig)
	if err := os.WriteFile(filepath.Join(c.work, "kubectl"), []byte(wrapper), 0o755); err != nil {
		return err
	}
	if err := c.hostMounts(); err != nil {
		return err
	}
	for i := 1; i <= c.nodes; i++ {
		n := newNode(c.work, i, c.zones)
		c.nodeList = append(c.nodeList, n)
		if err := n.createCgroups(); err != nil {
			return err
		}
		if err := n.startContainerd(ctx, c); err != nil {
			return err
		}
		if err := n.importImages(ctx, c, append(tars, spokeTars...)); err != nil {
			return err
		}
		if err := n.startKubelet(c); err != nil {
			return err
		}
	}
	c.log.Info("nodes started; deploying Spoke and CoreDNS")
	err = waitFor(ctx, 2*time.Minute, "nodes to register", func() bool {
		out, err := c.kubectl(ctx, "get", "nodes", "-o", "name")
		return err == nil && len(strings.Fields(out)) == c.nodes
	})
	if err != nil {
		return err
	}
	return c.deploy(ctx, spokeTars)
}

// startControlPlane starts etcd, kube-apiserver (reachable from the nodes
// on the host's bridge address), the controller manager and the scheduler.
func (c *cluster) startControlPlane(ctx context.Context) error {
	var err error
	if c.ca, err = pki.NewCA("spoke-cluster-ca"); err != nil {
		return err
	}
	pkiDir := filepath.Join(c.work, "pki")
	if err := os.MkdirAll(pkiDir, 0o755); err != nil {
		return err
	}
	c.caFile = filepath.Join(pkiDir, "ca.crt")
	if err := os.WriteFile(c.caFile, c.ca.PEM, 0o644); err != nil {
		return err
	}
	// kube-apiserver's client certificate to the kubelets (exec, logs).
	crt, key, err := c.ca.WritePair(pkiDir, "apiserver-kubelet-client", pki.Spec{CN: "kube-apiserver-kubelet-client", Orgs: []string{"system:masters"}})
	if err != nil {
		return err
	}
	apiDir := filepath.Join(c.work, "api")
	c.api, err = kubeapi.Start(ctx, kubeapi.Options{
		Binaries:            c.bins.kube,
		DataDir:             apiDir,
		WithServiceAccounts: true,
		ExtraAPIServerArgs: []string{
			// Its service endpoint and certificate name the bridge
			// address, where nodes and pods reach it.
			"--advertise-address=" + hostAddr.Addr().String(),
			"--endpoint-reconciler-type=lease",
			"--client-ca-file=" + c.caFile,
			"--kubelet-client-certificate=" + crt,
			"--kubelet-client-key=" + key,
			"--enable-admission-plugins=NodeRestriction",
			"--kubelet-preferred-address-types=InternalIP",
		},
	})
	if err != nil {
		return fmt.Errorf("starting kube-apiserver: %w", err)
	}
	u := strings.TrimPrefix(c.api.URL, "https://")
	_, c.apiPort, _ = net.SplitHostPort(u)
	c.kubeconfig = filepath.Join(c.work, "kubeconfig")
	if err := c.api.WriteKubeconfig(c.kubeconfig); err != nil {
		return err
	}
	fctx, cancel := context.WithCancel(context.Background())
	c.stopForwarders = cancel
	if err := forward(fctx, c.log, net.JoinHostPort(hostAddr.Addr().String(), c.apiPort), func() []string { return []string{u} }); err != nil {
		return fmt.Errorf("API server's bridge address: %w", err)
	}
	if err := forward(fctx, c.log, net.JoinHostPort(hostAddr.Addr().String(), controlPlanePort), c.controlPlaneTargets); err != nil {
		return fmt.Errorf("control plane's front address: %w", err)
	}
	common := []string{"--kubeconfig=" + c.kubeconfig, "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0"}
	c.kcm, err = startProcess("kube-controller-manager", filepath.Join(c.logs, "kube-controller-manager.log"), nil,
		append([]string{c.bins.kcm,
			"--service-account-private-key-file=" + filepath.Join(apiDir, "sa.key"),
			"--root-ca-file=" + filepath.Join(apiDir, "apiserver-certs", "apiserver.crt"),
			"--use-service-account-credentials=false",
			"--controllers=*,-node-ipam-controller,-cloud-node-lifecycle-controller",
		}, common...)...)
	if err != nil {
		return err
	}
	c.sched, err = startProcess("kube-scheduler", filepath.Join(c.logs, "kube-scheduler.log"), nil, append([]string{c.bins.scheduler}, common...)...)
	return err
}

// controlPlaneTargets are the node addresses the control plane's pods may
// listen on (host network): the front address tries them in turn.
func (c *cluster) controlPlaneTargets() []string {
	var out []string
	for i := 1; i <= c.nodes; i++ {
		out = append(out, net.JoinHostPort(nodeAddr(i).String(), controlPlanePort))
	}
	return out
}

// hostMounts makes the agents' bpffs (shared: the DaemonSet mounts it with
// Bidirectional propagation) and kubelet's /var/lib/kubelet mount point.
func (c *cluster) hostMounts() error {
	bpf := filepath.Join(c.work, "bpf")
	if err := syscall.Mount("bpf", bpf, "bpf", 0, ""); err != nil {
		return fmt.Errorf("mounting bpffs at %s: %w", bpf, err)
	}
	if err := syscall.Mount("", bpf, "", syscall.MS_SHARED, ""); err != nil {
		return err
	}
	if _, err := os.Stat("/var/lib/kubelet"); errors.Is(err, os.ErrNotExist) {
		if err := os.Mkdir("/var/lib/kubelet", 0o755); err != nil {
			return err
		}
		c.madeVarLibKubelet = true
	}
	return nil
}

// writeKubeconfig writes a kubeconfig that reaches the API server on the
// bridge with a client certificate.
func (c *cluster) writeKubeconfig(path, certFile, keyFile string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["spoke-cluster"] = &clientcmdapi.Cluster{
		Server:                   "https://" + net.JoinHostPort(hostAddr.Addr().String(), c.apiPort),
		CertificateAuthorityData: c.api.RESTConfig().CAData,
	}
	cfg.AuthInfos["node"] = &clientcmdapi.AuthInfo{ClientCertificate: certFile, ClientKey: keyFile}
	cfg.Contexts["node"] = &clientcmdapi.Context{Cluster: "spoke-cluster", AuthInfo: "node"}
	cfg.CurrentContext = "node"
	return clientcmd.WriteToFile(*cfg, path)
}

// cleanup stops everything and removes what the cluster made; at the start
// of a run it removes what an earlier, killed run left.
func (c *cluster) cleanup(keepLogs bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var errs []error
	for _, n := range c.nodeList {
		errs = append(errs, n.stop(ctx, c))
	}
	errs = append(errs, c.sched.stop(15*time.Second), c.kcm.stop(15*time.Second))
	if c.api != nil {
		c.api.Stop()
	}
	if c.stopForwarders != nil {
		c.stopForwarders()
	}
	if c.bins.containerd != "" {
		for i := 1; i <= 26; i++ {
			errs = append(errs, killShims(filepath.Join(filepath.Dir(c.bins.containerd), "containerd-shim-runc-v2"), newNode(c.work, i, 1).socket()))
		}
	}
	errs = append(errs, unmountUnder(c.work), removeCgroups(), removeNetwork())
	if c.madeVarLibKubelet {
		errs = append(errs, os.Remove("/var/lib/kubelet"))
	}
	if c.ipForward != "" {
		if b, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(string(b)) != c.ipForward {
			c.log.Info("restoring net.ipv4.ip_forward", "value", c.ipForward)
			errs = append(errs, os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte(c.ipForward), 0o644))
		}
	}
	errs = append(errs, removeWork(c.work, keepLogs))
	return errors.Join(errs...)
}

// unmountUnder unmounts every mount at or below dir, deepest first.
func unmountUnder(dir string) error {
	var errs []error
	for range 3 {
		mounts := mountsUnder(dir)
		if len(mounts) == 0 {
			return nil
		}
		errs = nil
		for _, m := range mounts {
			if err := syscall.Unmount(m, 0); err != nil {
				errs = append(errs, syscall.Unmount(m, syscall.MNT_DETACH))
			}
		}
	}
	if m := mountsUnder(dir); len(m) > 0 {
		errs = append(errs, fmt.Errorf("still mounted: %v", m))
	}
	return errors.Join(errs...)
}

// mountsUnder lists the mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 {
			if p := unescapeMount(f[4]); p == dir || strings.HasPrefix(p, dir+"/") {
				out = append(out, p)
			}
		}
	}
	// Deepest first: longer paths are below shorter ones.
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if len(out[j]) > len(out[i]) {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeWork removes the work folder, or all of it but the logs.
func removeWork(dir string, keepLogs bool) error {
	if !keepLogs {
		return os.RemoveAll(dir)
	}
	entries, _ := os.ReadDir(dir)
	var errs []error
	for _, e := range entries {
		if e.Name() != "logs" {
			errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
		}
	}
	return errors.Join(errs...)
}

// repoRoot is the folder of the main module's go.mod, above the working
// directory.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/spoke-proxy/spoke\n") {
			return dir, nil
		}
		if filepath.Dir(dir) == dir {
			return "", errors.New("run from inside the spoke repository")
		}
		dir = filepath.Dir(dir)
	}
}
