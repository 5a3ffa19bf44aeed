// Command local runs Spoke on one machine: a real kube-apiserver and etcd,
// the control plane, and three nodes, each a network namespace with its own
// agent programming the eBPF datapath, its own cgroup, and pods as
// processes in namespaces of their own. It creates demo services of every
// kind, prints one READY line once every agent has programmed them, and
// runs until interrupted, then removes everything it made.
//
// With -check it instead connects from every node's client pod and from
// outside to every demo service, prints a line per connection and a
// summary, cleans up and exits 0 if every connection went where it must.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/client-go/kubernetes"

	"github.com/spoke-proxy/spoke/internal/kubeapi"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

const nodes = 3

// pinRoot holds each node's eBPF pins, one folder per node.
const pinRoot = "/sys/fs/bpf/spoke-local"

func main() {
	if len(os.Args) > 1 && (os.Args[1] == serveCommand || os.Args[1] == probeCommand) {
		if err := podMain(os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	bin := flag.String("bin", "bin", "folder holding spoke-controlplane and spoke-agent")
	check := flag.Bool("check", false, "check traffic to every demo service from every node and from outside, then exit")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err := run(ctx, *bin, *check, log)
	var failed checkFailed
	switch {
	case errors.As(err, &failed):
		os.Exit(1)
	case err != nil:
		log.Error("local cluster failed", "err", err)
		os.Exit(1)
	}
}

// checkFailed is the error of a -check run in which connections failed.
type checkFailed int

func (n checkFailed) Error() string { return fmt.Sprintf("%d connections failed", int(n)) }

// local is one run of the local cluster: what it started, in the order it
// is stopped.
type local struct {
	bin, dir string
	log      *slog.Logger
	procs    *processes
	// cleanups run after the processes stop, before the network goes.
	cleanups []func()
	nodes    []*node
	backends []*pod
	clients  map[string]*pod
}

func run(ctx context.Context, bin string, check bool, log *slog.Logger) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("run as root: the nodes are network namespaces and the datapath is eBPF")
	}
	bin, err = filepath.Abs(bin)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "spoke-local-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// What a run that was killed left behind.
	if err := errors.Join(cleanupTopology(), os.RemoveAll(pinRoot)); err != nil {
		return fmt.Errorf("removing what an earlier run left: %w", err)
	}
	topo, nodeList, err := newTopology(nodes)
	defer func() {
		if cerr := topo.close(); cerr != nil {
			log.Warn("removing the local network", "err", cerr)
		}
	}()
	if err != nil {
		return fmt.Errorf("building the local network: %w", err)
	}
	// Processes stop first, then each node's datapath is removed, then the
	// network.
	l := &local{bin: bin, dir: dir, log: log, procs: &processes{log: log, dir: dir}, nodes: nodeList, clients: map[string]*pod{}}
	defer func() {
		l.procs.stopAll()
		for _, f := range l.cleanups {
			f()
		}
	}()
	if err := l.startPods(ctx, topo); err != nil {
		return err
	}
	api, kubeconfig, err := l.startAPI(ctx)
	if api != nil {
		defer api.Stop()
	}
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(api.RESTConfig())
	if err != nil {
		return err
	}
	sec, err := l.secure(api.RESTConfig().BearerToken)
	if err != nil {
		return err
	}
	cpAddr, err := l.startControlPlane(kubeconfig, sec)
	if err != nil {
		return err
	}
	agentAddrs, err := l.startAgents(ctx, client, cpAddr, sec)
	if err != nil {
		return err
	}
	services, err := createDemo(ctx, client, nodeList, l.backends)
	if err != nil {
		return err
	}
	if err := l.waitProgrammed(ctx, agentAddrs, services); err != nil {
		return err
	}
	if check {
		return l.check(ctx, services, cpAddr, sec)
	}
	fmt.Printf("READY controlplane=%s kubeconfig=%s agents=%s\n", cpAddr, kubeconfig, strings.Join(agentAddrs, ","))
	l.hint(cpAddr, agentAddrs, services, sec)
	select {
	case <-ctx.Done():
	case err := <-l.procs.exited:
		return err
	}
	log.Info("stopping")
	return nil
}

// startPods starts backend pods on node-2 and node-3 (a client on node-1
// reaches them only through other nodes) and a client pod on every node.
func (l *local) startPods(ctx context.Context, topo *topology) error {
	for _, n := range l.nodes {
		if n.index > 1 {
			p, err := topo.addPod(n, fmt.Sprintf("web-%d", n.index), 10)
			if err != nil {
				return err
			}
			cmd, done, err := podCommand(ctx, p, serveCommand, "-name", p.name)
			if err != nil {
				return err
			}
			err = l.procs.startCmd(p.name, cmd)
			done()
			if err != nil {
				return err
			}
			l.backends = append(l.backends, p)
		}
		c, err := topo.addPod(n, "client", clientPod)
		if err != nil {
			return err
		}
		l.clients[n.name] = c
	}
	return nil
}

// startAPI starts kube-apiserver and etcd and writes a kubeconfig for them.
func (l *local) startAPI(ctx context.Context) (*kubeapi.Server, string, error) {
	l.log.Info("building (first time: several minutes) and starting kube-apiserver and etcd")
	startCtx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	api, err := kubeapi.Start(startCtx, kubeapi.Options{DataDir: filepath.Join(l.dir, "apiserver")})
	if err != nil {
		return nil, "", err
	}
	kubeconfig := filepath.Join(l.dir, "kubeconfig")
	return api, kubeconfig, api.WriteKubeconfig(kubeconfig)
}

// startControlPlane starts the control plane on the host's end of the node
// network, serving over TLS and authenticating agents by their pod-bound
// tokens, and returns its address.
func (l *local) startControlPlane(kubeconfig string, sec *security) (string, error) {
	cpPort, err := freePort(hostAddr.Addr().String())
	if err != nil {
		return "", err
	}
	cpAddr := net.JoinHostPort(hostAddr.Addr().String(), fmt.Sprint(cpPort))
	metricsPort, err := freePort("127.0.0.1")
	if err != nil {
		return "", err
	}
	return cpAddr, l.procs.start("controlplane", filepath.Join(l.bin, "spoke-controlplane"),
		"-kubeconfig", kubeconfig, "-grpc-address", cpAddr, "-metrics-address", fmt.Sprintf("127.0.0.1:%d", metricsPort),
		"-tls-cert-file", sec.certFile, "-tls-key-file", sec.keyFile,
		"-agent-auth", "token", "-agent-token-audience", agentAudience, "-agent-service-accounts", agentNamespace+"/"+agentAccount)
}

// startAgents starts one agent per node, inside the node's network
// namespace, each with a token bound to a pod of its node, and returns
// their inspection addresses.
func (l *local) startAgents(ctx context.Context, client kubernetes.Interface, cpAddr string, sec *security) ([]string, error) {
	var agentAddrs []string
	for _, n := range l.nodes {
		token, err := l.agentToken(ctx, client, n.name)
		if err != nil {
			return nil, err
		}
		addr := nodeAddr(n.index).String()
		agentAddrs = append(agentAddrs, addr+":18001")
		flags := agentDatapathFlags(n)
		l.cleanups = append(l.cleanups, func() {
			out, err := exec.Command("nsenter", append([]string{"--net=" + n.ns.Path(), "--", filepath.Join(l.bin, "spoke-agent"), "-cleanup"}, flags...)...).CombinedOutput()
			if err != nil {
				l.log.Warn("removing the datapath", "node", n.name, "err", err, "output", string(out))
			}
		})
		args := append([]string{"--net=" + n.ns.Path(), "--", filepath.Join(l.bin, "spoke-agent"),
			"-node-name", n.name, "-controlplane", cpAddr, "-tls-ca-file", sec.caFile, "-token-file", token,
			"-state-file", filepath.Join(l.dir, n.name+".db"),
			"-inspect-address", addr + ":18001", "-healthz-address", addr + ":10256", "-metrics-address", addr + ":10249",
		}, flags...)
		if err := l.procs.start(n.name, "nsenter", args...); err != nil {
			return nil, err
		}
	}
	l.cleanups = append(l.cleanups, func() {
		if err := os.Remove(pinRoot); err != nil && !errors.Is(err, os.ErrNotExist) {
			l.log.Warn("removing the pin folder", "err", err)
		}
	})
	return agentAddrs, nil
}

// waitProgrammed waits until every agent has programmed every demo
// service.
func (l *local) waitProgrammed(ctx context.Context, agentAddrs []string, services []*demoService) error {
	waitCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for _, addr := range agentAddrs {
		for _, s := range services {
			if err := waitProgrammed(waitCtx, addr, demoNamespace+"/"+s.name); err != nil {
				return fmt.Errorf("agent %s: %w (logs in %s)", addr, err, l.dir)
			}
		}
	}
	return nil
}

// check sends a connection from every node and from outside to every demo
// service and prints a summary.
func (l *local) check(ctx context.Context, services []*demoService, cpAddr string, sec *security) error {
	cs := checks(l.nodes, services)
	failed := runChecks(ctx, os.Stdout, cs, l.clients)
	fmt.Printf("local-check: %d of %d connections went where they must, from %d nodes and from outside, to %d services (%s)\n",
		len(cs)-failed, len(cs), len(l.nodes), len(services), kinds(services))
	refused, err := sec.checkInspection(ctx, cpAddr, len(l.nodes))
	if err != nil {
		return err
	}
	if failed+refused > 0 {
		return checkFailed(failed + refused)
	}
	return nil
}

// hint logs commands to try against the running cluster.
func (l *local) hint(cpAddr string, agentAddrs []string, services []*demoService, sec *security) {
	web := services[0]
	l.log.Info("demo services programmed on every node; try:",
		"list", "go tool grpcurl -cacert "+sec.caFile+" "+cpAddr+" list",
		"nodes", sec.grpcurl(cpAddr, "ListNodes"),
		"agent", "go tool grpcurl -plaintext "+agentAddrs[0]+" spoke.v1.AgentInspectionService/GetState",
		"nodeport", fmt.Sprintf("curl http://%s:%d/", nodeAddr(1), services[2].nodePort),
		"clusterip", fmt.Sprintf("nsenter --net=%s sh -c 'echo $$ > %s/cgroup.procs && curl http://%s:%d/'", l.clients["node-1"].ns.Path(), l.nodes[0].cgroup, web.clusterIP, web.port))
}

// agentDatapathFlags are the eBPF flags of a node's agent, the same for
// running it and for cleaning up after it.
func agentDatapathFlags(n *node) []string {
	return []string{"-datapath", "ebpf", "-bpf-pin-path", filepath.Join(pinRoot, n.name), "-cgroup-root", n.cgroup}
}

func kinds(services []*demoService) string {
	var out []string
	for _, s := range services {
		out = append(out, s.kind)
	}
	return strings.Join(out, ", ")
}

// waitProgrammed polls an agent's inspection service until the datapath
// has programmed the service.
func waitProgrammed(ctx context.Context, addr, service string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := spokev1.NewAgentInspectionServiceClient(conn)
	for {
		st, err := client.GetState(ctx, &spokev1.GetStateRequest{})
		if err == nil {
			for _, s := range st.GetProgrammedServices() {
				if s == service {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not programmed: %w (last error: %w)", service, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// processes are the child processes of the demo.
type processes struct {
	log    *slog.Logger
	dir    string
	cmds   []*exec.Cmd
	exited chan error
}

func (p *processes) start(name, path string, args ...string) error {
	return p.startCmd(name, exec.Command(path, args...))
}

// startCmd starts cmd in a process group of its own, its output in a log
// file.
func (p *processes) startCmd(name string, cmd *exec.Cmd) error {
	if p.exited == nil {
		p.exited = make(chan error, 16)
	}
	logPath := filepath.Join(p.dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = f, f
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("starting %s: %w", name, err)
	}
	p.log.Info("started", "process", name, "pid", cmd.Process.Pid, "log", logPath)
	p.cmds = append(p.cmds, cmd)
	go func() {
		err := cmd.Wait()
		f.Close()
		if err == nil {
			err = errors.New("exit status 0")
		}
		p.exited <- fmt.Errorf("%s exited: %w (log %s)", name, err, logPath)
	}()
	return nil
}

func (p *processes) stopAll() {
	for i := len(p.cmds) - 1; i >= 0; i-- {
		cmd := p.cmds[i]
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	}
	deadline := time.After(10 * time.Second)
	for range p.cmds {
		select {
		case <-p.exited:
		case <-deadline:
			for _, cmd := range p.cmds {
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			}
			return
		}
	}
}

// freePort returns a TCP port nothing listens on at addr.
func freePort(addr string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
