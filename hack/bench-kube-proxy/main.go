// Command bench-kube-proxy measures Spoke against real kube-proxy
// (v1.36.3, built from the Go module proxy with its defaults) side by side
// on this machine's kernel, against one real kube-apiserver: kube-proxy in
// its nftables and iptables modes and Spoke's agent on the eBPF datapath
// (with Spoke's control plane) each run on a node of its own, a network
// namespace with backends behind it, in interleaved rounds. It reports,
// each a median over rounds:
//
//   - the time to program N services x 10 endpoints from cold: from the
//     proxy's start until a connection to the last service reaches an
//     endpoint (the common clock), with each proxy's own sync metric;
//   - endpoint changes, alone and under a rate of changes: each side's
//     network_programming_duration_seconds (kube-proxy's own, the control
//     plane's for Spoke: API write to the agent's acknowledgement), p50/p99;
//   - TCP connect time and request/answer round trip through a ClusterIP,
//     against the same directly to an endpoint;
//   - CPU seconds and peak RSS of each proxy over the same churn;
//   - the API server's bytes sent to N kube-proxies against those sent to
//     Spoke's one control plane over the same objects and changes.
//
// The last line printed is one JSON object of the headline ratios. Run as
// root, from inside the repository (it builds kube-proxy, kube-apiserver
// and etcd from hack/ on first use): go run ./hack/bench-kube-proxy -h.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/spoke-proxy/spoke/internal/cgroup"
	"github.com/spoke-proxy/spoke/internal/countproxy"
	"github.com/spoke-proxy/spoke/internal/kubeapi"
)

func main() {
	if ok, err := subcommand(os.Args[1:]); ok {
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	cfg := parseFlags()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("benchmark failed", "err", err)
		os.Exit(1)
	}
}

// config is what the flags set.
type config struct {
	bin             string
	small, large    int
	rounds          int
	largeRounds     int
	fleet           int
	fleetRate       float64
	fleetFor        time.Duration
	churnRate       float64
	churnFor        time.Duration
	aloneChanges    int
	programTimeout  time.Duration
	iptablesTimeout time.Duration
	connects        int
	keep            bool
}

func parseFlags() config {
	var c config
	quick := flag.Bool("quick", false, "a smoke test: small counts, one round (100/300 services, 5 kube-proxies)")
	flag.StringVar(&c.bin, "bin", "bin", "folder holding spoke-controlplane and spoke-agent")
	flag.IntVar(&c.small, "services", 1000, "services of the smaller size")
	flag.IntVar(&c.large, "large-services", 10000, "services of the larger size (0 skips it)")
	flag.IntVar(&c.rounds, "rounds", 3, "rounds at the smaller size")
	flag.IntVar(&c.largeRounds, "large-rounds", 2, "rounds at the larger size (iptables mode runs once there)")
	flag.IntVar(&c.fleet, "kube-proxies", 50, "kube-proxy processes whose API traffic is compared with the control plane's")
	flag.Float64Var(&c.fleetRate, "fleet-rate", 2, "endpoint changes per second while the kube-proxies' API traffic is counted")
	flag.DurationVar(&c.fleetFor, "fleet-for", 30*time.Second, "how long those changes go on")
	flag.Float64Var(&c.churnRate, "churn-rate", 100, "endpoint changes per second under churn")
	flag.DurationVar(&c.churnFor, "churn-for", 30*time.Second, "how long the churn goes on")
	flag.IntVar(&c.aloneChanges, "alone-changes", 10, "endpoint changes one at a time (every 2 s)")
	flag.DurationVar(&c.programTimeout, "program-timeout", 5*time.Minute, "longest a proxy may take to program the services")
	flag.DurationVar(&c.iptablesTimeout, "iptables-timeout", 3*time.Minute, "longest iptables mode may take at the larger size (reported as a lower bound)")
	flag.IntVar(&c.connects, "connects", 300, "connections each way for the connect-time figures")
	flag.BoolVar(&c.keep, "keep", false, "keep the data directory (logs)")
	flag.Parse()
	if *quick {
		c.small, c.large, c.rounds, c.largeRounds, c.fleet = 100, 300, 1, 1, 5
		c.fleetFor, c.churnRate, c.churnFor, c.aloneChanges = 10*time.Second, 20, 10*time.Second, 3
		c.iptablesTimeout, c.connects = time.Minute, 100
	}
	return c
}

// bench is one run: the API server, the control plane, the nodes.
type bench struct {
	cfg        config
	log        *slog.Logger
	id         string
	dir        string
	bin        string
	kubeProxy  string
	cgroupRoot string
	bpffs      string // a bpffs of the run's own, for the agents' pins
	rest       *rest.Config
	apiHost    string // the API server's host:port
	client     *kubernetes.Clientset
	objs       *objects
	cp         *node // cgroup of the control plane (no namespace)
	cpGRPC     string
	cpMetrics  string
	cpAPI      *countproxy.Proxy // counts what the API server sends the control plane
	nodes      []*node
}

func run(ctx context.Context, cfg config, log *slog.Logger) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("run as root: the nodes are network namespaces, the datapaths nftables, iptables and eBPF")
	}
	b := &bench{cfg: cfg, log: log, id: newID()}
	if b.bin, err = filepath.Abs(cfg.bin); err != nil {
		return err
	}
	if b.dir, err = os.MkdirTemp("", "bench-kube-proxy-"); err != nil {
		return err
	}
	defer func() {
		if cfg.keep {
			log.Info("logs kept", "dir", b.dir)
			return
		}
		os.RemoveAll(b.dir)
	}()
	root, err := cgroup.Root()
	if err != nil {
		return err
	}
	b.cgroupRoot = filepath.Join(root, b.id)
	if err := os.MkdirAll(b.cgroupRoot, 0o755); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, b.close()) }()
	if err := b.mountBPFFS(); err != nil {
		return err
	}

	log.Info("building kube-proxy, kube-apiserver and etcd (several minutes the first time)")
	paths, err := kubeapi.BuildComponents(ctx, "etcd", "kube-apiserver", "kube-proxy")
	if err != nil {
		return err
	}
	b.kubeProxy = paths[2]
	api, err := kubeapi.Start(ctx, kubeapi.Options{
		Binaries: kubeapi.Binaries{Etcd: paths[0], KubeAPIServer: paths[1]},
		DataDir:  filepath.Join(b.dir, "apiserver"),
	})
	if err != nil {
		return err
	}
	defer api.Stop()
	if err := b.connectAPI(api); err != nil {
		return err
	}
	res, err := b.measure(ctx)
	if err != nil {
		return err
	}
	res.print(os.Stdout, cfg)
	return nil
}

// newID names a run's namespaces and cgroups, unique on the machine.
func newID() string {
	var idb [3]byte
	rand.Read(idb[:])
	return "spkb" + hex.EncodeToString(idb[:])
}

func (b *bench) connectAPI(api *kubeapi.Server) error {
	b.rest = api.RESTConfig()
	u, err := url.Parse(b.rest.Host)
	if err != nil {
		return err
	}
	b.apiHost = u.Host
	if b.client, err = kubernetes.NewForConfig(b.rest); err != nil {
		return err
	}
	b.objs = &objects{client: b.client}
	return nil
}

// close stops everything and removes the nodes and cgroups.
func (b *bench) close() error {
	var errs []error
	for i := len(b.nodes) - 1; i >= 0; i-- {
		errs = append(errs, b.nodes[i].close())
	}
	if b.cpAPI != nil {
		b.cpAPI.Close()
	}
	errs = append(errs, removeCgroup(b.cgroupRoot))
	if b.bpffs != "" {
		errs = append(errs, unix.Unmount(b.bpffs, unix.MNT_DETACH), os.Remove(b.bpffs))
	}
	return errors.Join(errs...)
}

// mountBPFFS mounts a bpffs of the run's own, so that the agents' pins
// need no host-wide mount at /sys/fs/bpf.
func (b *bench) mountBPFFS() error {
	dir := filepath.Join(b.dir, "bpffs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mounting bpffs at %s: %w", dir, err)
	}
	b.bpffs = dir
	return nil
}

// startControlPlane starts Spoke's control plane on the host, its API
// traffic through a counting proxy, with its default flags (and no
// agent authentication: the agents present no token).
func (b *bench) startControlPlane() error {
	cp, err := b.cgroupNode("controlplane")
	if err != nil {
		return err
	}
	b.cp = cp
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	b.cpAPI = countproxy.New(lis, b.apiHost, 0)
	restCfg := rest.CopyConfig(b.rest)
	restCfg.Host = "https://" + b.cpAPI.Addr()
	kubeconfig := filepath.Join(b.dir, "controlplane.kubeconfig")
	if err := writeKubeconfig(restCfg, kubeconfig); err != nil {
		return err
	}
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	b.cpGRPC, b.cpMetrics = fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	p, err := b.startCmd(cp.proxyCgroup(), "spoke-controlplane", execCmd(filepath.Join(b.bin, "spoke-controlplane"),
		"-kubeconfig", kubeconfig, "-grpc-address", b.cpGRPC, "-metrics-address", b.cpMetrics, "-agent-auth", "none", "-insecure"))
	if err != nil {
		return err
	}
	cp.procs = append(cp.procs, p)
	return waitHTTP(p, "http://"+b.cpMetrics+"/metrics", time.Minute)
}

// cgroupNode is a node that is only cgroups, for processes on the host.
func (b *bench) cgroupNode(name string) (*node, error) {
	n := &node{name: name, cgroup: filepath.Join(b.cgroupRoot, name)}
	b.nodes = append(b.nodes, n)
	return n, n.makeCgroups()
}

func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func waitHTTP(p *proc, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if p.Exited() {
			return fmt.Errorf("%s exited: %s", p.Name, p.LogTail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not serving %s after %v", p.Name, url, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
