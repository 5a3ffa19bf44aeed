package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/expfmt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/spoke-proxy/spoke/controlplane/app"
	"github.com/spoke-proxy/spoke/controlplane/auth"
	"github.com/spoke-proxy/spoke/controlplane/model"
	"github.com/spoke-proxy/spoke/controlplane/server"
	"github.com/spoke-proxy/spoke/internal/process"
	"github.com/spoke-proxy/spoke/scale-sim/cluster"
)

// controlPlane is the control plane under test, wherever it runs.
type controlPlane interface {
	// Address is the gRPC address agents connect to.
	Address() string
	// Ready returns once the control plane serves views.
	Ready(ctx context.Context) error
	// Restart stops the control plane and starts it again on the same
	// address.
	Restart(ctx context.Context) error
	// Usage returns the control plane's memory and CPU figures.
	Usage() usage
	// Metric returns the sum of a metric's samples, if known.
	Metric(name string) (float64, bool)
	Stop()
}

type usage struct {
	// Own is false when the figures are those of a process that also runs
	// the simulator.
	Own              bool
	RSS, PeakRSS     uint64
	CPU              time.Duration
	Known            bool
	ProcessStartedAt time.Time
}

type cpSettings struct {
	window, maxDelay, ackTimeout time.Duration
	kubeconfig                   string
	restConfig                   *rest.Config
	dir                          string
	bin                          string
	log                          *slog.Logger
	// id authenticates agents (TLS and their tokens); nil serves
	// plaintext and trusts the node names agents send.
	id *identity
	// limits are the control plane's admission limits.
	limits server.Limits
	// memoryLimitMiB, when set, is the process's GOMEMLIMIT.
	memoryLimitMiB int
	// watchStall is the control plane's -watch-stall-timeout: the
	// synthetic API sends no watch bookmarks, so without changes its
	// watches hear nothing, and after the default 3 minutes the control
	// plane would report not ready and take no new agent (a 10,000-node
	// initial sync takes longer).
	watchStall time.Duration
}

// limits returns the control plane's admission limits: every simulated
// agent connects from one address, so there is no per-address limit; the
// rate of new streams is --new-streams-per-second, none unless positive.
func (c *config) limits() server.Limits {
	l := server.Limits{MaxPendingPerPeer: -1, MaxPending: -1, NewStreamsPerSecond: -1}
	if c.newStreamsPerSecond > 0 {
		l.NewStreamsPerSecond, l.NewStreamsBurst = c.newStreamsPerSecond, c.newStreamsBurst
	}
	if l.NewStreamsPerSecond > 0 && l.NewStreamsBurst == 0 {
		l.NewStreamsBurst = max(1, int(l.NewStreamsPerSecond))
	}
	return l
}

// processCP runs the spoke-controlplane binary as a child process.
type processCP struct {
	s           cpSettings
	grpcAddr    string
	metricsAddr string
	proc        *process.Process // nil when stopped
}

func startProcessCP(ctx context.Context, s cpSettings) (*processCP, error) {
	if s.bin == "" {
		s.bin = filepath.Join(s.dir, "spoke-controlplane")
		s.log.Info("building the control plane", "to", s.bin)
		build := exec.CommandContext(ctx, "go", "build", "-o", s.bin, "github.com/spoke-proxy/spoke/controlplane/cmd/spoke-controlplane")
		if out, err := build.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("building the control plane (run inside the repository, or pass --controlplane-bin): %w\n%s", err, out)
		}
	}
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	p := &processCP{s: s, grpcAddr: fmt.Sprintf("127.0.0.1:%d", ports[0]), metricsAddr: fmt.Sprintf("127.0.0.1:%d", ports[1])}
	s.log.Info("control plane", "grpc", p.grpcAddr, "metrics and profiles", "http://"+p.metricsAddr+"/debug/pprof/")
	return p, p.start()
}

func (p *processCP) start() error {
	args := []string{
		"-kubeconfig", p.s.kubeconfig, "-grpc-address", p.grpcAddr, "-metrics-address", p.metricsAddr,
		"-debounce-window", p.s.window.String(), "-debounce-max-delay", p.s.maxDelay.String(),
		"-ack-timeout", p.s.ackTimeout.String(), "-proxy-name", cluster.ProxyName,
		"-kube-api-qps", "1000", "-kube-api-burst", "2000", "-log-level", "warn", "-profiling",
		fmt.Sprint("-max-pending-streams-per-peer=", p.s.limits.MaxPendingPerPeer),
		fmt.Sprint("-max-pending-streams=", p.s.limits.MaxPending),
		fmt.Sprint("-new-streams-per-second=", p.s.limits.NewStreamsPerSecond),
		fmt.Sprint("-new-streams-burst=", p.s.limits.NewStreamsBurst),
	}
	if p.s.watchStall > 0 {
		args = append(args, "-watch-stall-timeout", p.s.watchStall.String())
	}
	if p.s.id != nil {
		args = append(args, "-tls-cert-file", p.s.id.certFile, "-tls-key-file", p.s.id.keyFile,
			"-agent-auth", "token", "-agent-token-audience", agentAudience, "-agent-service-accounts", agentNamespace+"/"+agentAccount)
	} else {
		args = append(args, "-agent-auth", "none", "-insecure")
	}
	cmd := exec.Command(p.s.bin, args...)
	if p.s.memoryLimitMiB > 0 {
		cmd.Env = append(os.Environ(), fmt.Sprintf("GOMEMLIMIT=%dMiB", p.s.memoryLimitMiB))
	}
	proc, err := process.Start("the control plane", cmd, filepath.Join(p.s.dir, "controlplane.log"))
	if err != nil {
		return err
	}
	p.proc = proc
	return nil
}

func (p *processCP) Address() string { return p.grpcAddr }

func (p *processCP) Ready(ctx context.Context) error {
	return waitHealthy(ctx, "http://"+p.metricsAddr+"/healthz", p.proc.Done(), p.proc.LogPath)
}

func (p *processCP) Restart(ctx context.Context) error {
	p.Stop()
	if err := p.start(); err != nil {
		return err
	}
	return p.Ready(ctx)
}

func (p *processCP) Stop() {
	if p.proc == nil {
		return
	}
	p.proc.Stop(15 * time.Second)
	p.proc = nil
}

func (p *processCP) Usage() usage {
	if p.proc == nil {
		return usage{}
	}
	u := procUsage(p.proc.Cmd.Process.Pid)
	u.Own, u.ProcessStartedAt = true, p.proc.Started
	return u
}

func (p *processCP) Metric(name string) (float64, bool) {
	return scrape("http://"+p.metricsAddr+"/metrics", name)
}

// inprocCP runs the control plane in the simulator's process, for
// profiling.
type inprocCP struct {
	s      cpSettings
	addr   string
	cp     *app.ControlPlane
	cancel context.CancelFunc
	done   chan error
}

func startInprocCP(s cpSettings) (*inprocCP, error) {
	p := &inprocCP{s: s, addr: "127.0.0.1:0"}
	return p, p.start()
}

func (p *inprocCP) start() error {
	lis, err := net.Listen("tcp", p.addr)
	if err != nil {
		return fmt.Errorf("listening: %w", err)
	}
	p.addr = lis.Addr().String()
	cfg := rest.CopyConfig(p.s.restConfig)
	cfg.QPS, cfg.Burst, cfg.UserAgent = 1000, 2000, "spoke-controlplane"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		lis.Close()
		return fmt.Errorf("creating API client: %w", err)
	}
	opts := app.Options{
		Client: client, GRPCListener: lis, Model: model.Options{ProxyName: cluster.ProxyName},
		Window: p.s.window, MaxDelay: p.s.maxDelay, AckTimeout: p.s.ackTimeout,
		Limits: p.s.limits, WatchStallAfter: p.s.watchStall,
		Logger: p.s.log.With("component", "controlplane"),
	}
	ctx, cancel := context.WithCancel(context.Background())
	var authn *auth.Authenticator
	if p.s.id != nil {
		// As spoke-controlplane -agent-auth=token does.
		if authn, err = inprocAuthenticator(ctx, client); err != nil {
			cancel()
			lis.Close()
			return err
		}
		cert, err := tls.LoadX509KeyPair(p.s.id.certFile, p.s.id.keyFile)
		if err != nil {
			cancel()
			lis.Close()
			return err
		}
		opts.Authenticator = authn
		opts.GRPCOptions = []grpc.ServerOption{grpc.Creds(credentials.NewServerTLSFromCert(&cert))}
	}
	cp, err := app.New(opts)
	if err != nil {
		cancel()
		lis.Close()
		return err
	}
	if authn != nil {
		cp.Registry.MustRegister(authn)
	}
	p.cp, p.cancel, p.done = cp, cancel, make(chan error, 1)
	go func() { p.done <- cp.Run(ctx) }()
	return nil
}

// inprocAuthenticator verifies agents' tokens against the API's issuer
// keys, with a watch of the agents' pods.
func inprocAuthenticator(ctx context.Context, client kubernetes.Interface) (*auth.Authenticator, error) {
	keys, err := auth.DiscoverIssuer(ctx, client.Discovery().RESTClient())
	if err != nil {
		return nil, err
	}
	accounts := []string{agentNamespace + "/" + agentAccount}
	pods, err := auth.WatchAgentPods(ctx, client, accounts)
	if err != nil {
		return nil, err
	}
	return auth.New(auth.Options{Client: client, Audience: agentAudience, ServiceAccounts: accounts, Keys: keys, Pods: pods})
}

func (p *inprocCP) Address() string { return p.addr }

func (p *inprocCP) Ready(ctx context.Context) error {
	select {
	case <-p.cp.Store.Ready():
		return nil
	case err := <-p.done:
		return fmt.Errorf("control plane stopped: %w", err)
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *inprocCP) Restart(ctx context.Context) error {
	p.Stop()
	if err := p.start(); err != nil {
		return err
	}
	return p.Ready(ctx)
}

func (p *inprocCP) Stop() {
	if p.cancel == nil {
		return
	}
	p.cancel()
	<-p.done
	p.cancel = nil
}

func (p *inprocCP) Usage() usage { return procUsage(os.Getpid()) }

func (p *inprocCP) Metric(name string) (float64, bool) {
	mfs, err := p.cp.Registry.Gather()
	if err != nil {
		return 0, false
	}
	var buf bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&buf, mf); err != nil {
			return 0, false
		}
	}
	return sumSamples(&buf, name)
}

// remoteCP is a control plane someone else runs.
type remoteCP struct {
	addr, metricsURL string
}

func (p *remoteCP) Address() string { return p.addr }

func (p *remoteCP) Ready(ctx context.Context) error {
	if p.metricsURL == "" {
		return nil
	}
	return waitHealthy(ctx, strings.TrimSuffix(p.metricsURL, "/metrics")+"/healthz", nil, "")
}

func (p *remoteCP) Restart(context.Context) error {
	return errors.New("cannot restart a control plane the simulator did not start")
}

func (p *remoteCP) Stop() {}

func (p *remoteCP) Usage() usage {
	if p.metricsURL == "" {
		return usage{}
	}
	rss, ok1 := scrape(p.metricsURL, "process_resident_memory_bytes")
	cpu, ok2 := scrape(p.metricsURL, "process_cpu_seconds_total")
	return usage{Own: true, Known: ok1 && ok2, RSS: uint64(rss), CPU: time.Duration(cpu * float64(time.Second))}
}

func (p *remoteCP) Metric(name string) (float64, bool) {
	if p.metricsURL == "" {
		return 0, false
	}
	return scrape(p.metricsURL, name)
}

func waitHealthy(ctx context.Context, url string, exited <-chan struct{}, logPath string) error {
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := client.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("control plane exited; see %s", logPath)
		case <-ctx.Done():
			return fmt.Errorf("control plane not ready (%s): %w", url, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// procUsage reads a process's memory and CPU from /proc.
func procUsage(pid int) usage {
	u := usage{}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		kb, _ := strconv.ParseUint(fields[1], 10, 64)
		switch fields[0] {
		case "VmRSS:":
			u.RSS = kb << 10
		case "VmHWM:":
			u.PeakRSS = kb << 10
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u
	}
	// Fields after the command name, which is in parentheses.
	rest := string(stat[strings.LastIndexByte(string(stat), ')')+2:])
	fields := strings.Fields(rest)
	if len(fields) > 12 {
		utime, _ := strconv.ParseUint(fields[11], 10, 64)
		stime, _ := strconv.ParseUint(fields[12], 10, 64)
		const ticks = 100 // USER_HZ
		u.CPU = time.Duration(utime+stime) * time.Second / ticks
		u.Known = true
	}
	return u
}

// scrape returns the sum of a metric's samples from a Prometheus text
// endpoint.
// scrape sums the samples of a metric served at url; see sumSamples.
func scrape(url, name string) (float64, bool) {
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	return sumSamples(resp.Body, name)
}

// sumSamples sums the samples of a metric in the Prometheus text format:
// every series of name, or only those whose name and labels start with
// name when it holds labels (`name{method="local"`...).
func sumSamples(r io.Reader, name string) (float64, bool) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	sum, found := 0.0, false
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{' && !strings.Contains(name, "{")) {
			continue
		}
		fields := strings.Fields(line)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err == nil {
			sum, found = sum+v, true
		}
	}
	return sum, found
}

func freePorts(n int) ([]int, error) {
	var out []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding free ports: %w", err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}
