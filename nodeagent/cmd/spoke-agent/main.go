// Command spoke-agent programs its node's datapath with the view the
// control plane streams to it.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/spoke-proxy/spoke/datapath/ebpf"
	"github.com/spoke-proxy/spoke/internal/command"
	"github.com/spoke-proxy/spoke/internal/grpcserver"
	"github.com/spoke-proxy/spoke/internal/tlsfiles"
	"github.com/spoke-proxy/spoke/nodeagent/agent"
	"github.com/spoke-proxy/spoke/nodeagent/healthcheck"
)

type config struct {
	nodeName       string
	controlPlane   string
	caFile         string
	tlsCert        string
	tlsKey         string
	tlsRefresh     time.Duration
	insecure       bool
	tokenFile      string
	stateFile      string
	datapath       datapathFlags
	cleanup        bool
	mountBPFFS     bool
	healthzAddr    string
	metricsAddr    string
	inspectAddr    string
	repairInterval time.Duration
	keepalive      keepalive.ClientParameters
	logging        command.Logging
}

func main() {
	var c config
	host, _ := os.Hostname()
	if n := os.Getenv("NODE_NAME"); n != "" {
		host = n
	}
	flag.StringVar(&c.nodeName, "node-name", host, "name of this node (default $NODE_NAME, else the hostname)")
	flag.StringVar(&c.controlPlane, "controlplane", "spoke-controlplane.kube-system.svc:18000", "address of the control plane's gRPC service")
	flag.StringVar(&c.caFile, "tls-ca-file", "", "CA bundle to verify the control plane; required unless -insecure")
	flag.StringVar(&c.tlsCert, "tls-cert-file", "", "client certificate presented to the control plane (when it requires mutual TLS)")
	flag.StringVar(&c.tlsKey, "tls-key-file", "", "key of -tls-cert-file")
	flag.DurationVar(&c.tlsRefresh, "tls-refresh-interval", tlsfiles.DefaultRefresh, "how often the CA bundle and client certificate files are read again, so that rotated ones apply without a restart")
	flag.BoolVar(&c.insecure, "insecure", false, "connect to the control plane in plaintext, sending no token (tests and local demos only)")
	flag.StringVar(&c.tokenFile, "token-file", "/var/run/secrets/spoke/token", "projected ServiceAccount token presented to the control plane; empty sends none")
	flag.StringVar(&c.stateFile, "state-file", "/var/lib/spoke/state.db", "bbolt file of applied views; empty keeps none")
	c.datapath.register(flag.CommandLine)
	flag.BoolVar(&c.cleanup, "cleanup", false, "remove everything the datapath left in the kernel (stopping every flow through it), then exit")
	flag.BoolVar(&c.mountBPFFS, "mount-bpffs", false, "make sure -bpf-pin-path is on a bpffs, mounting one at /sys/fs/bpf if none is, then exit (the DaemonSet's init container)")
	flag.StringVar(&c.healthzAddr, "healthz-address", "0.0.0.0:10256", "address of /healthz and /livez (kube-proxy's port)")
	flag.StringVar(&c.metricsAddr, "metrics-address", "127.0.0.1:10249", "address of /metrics (kube-proxy's port)")
	flag.StringVar(&c.inspectAddr, "inspect-address", "127.0.0.1:18001", "address of the inspection gRPC service")
	flag.DurationVar(&c.repairInterval, "repair-interval", 30*time.Second, "how often the datapath is read back and repaired")
	flag.DurationVar(&c.keepalive.Time, "keepalive-time", agent.DefaultKeepalive.Time, "ping the control plane after this long without hearing from it (at least 10s, the most often the control plane permits)")
	flag.DurationVar(&c.keepalive.Timeout, "keepalive-timeout", agent.DefaultKeepalive.Timeout, "drop the connection and reconnect when a ping is not answered in this time: a control plane cut off without the connection closing is noticed within -keepalive-time plus this")
	c.logging.Register(flag.CommandLine)
	flag.Parse()

	log := c.logging.Logger()
	if c.mountBPFFS {
		if err := ebpf.EnsureBPFFS(c.datapath.ebpf.PinPath); err != nil {
			log.Error("bpffs", "err", err)
			os.Exit(1)
		}
		log.Info("bpffs ready", "pin_path", c.datapath.ebpf.PinPath)
		return
	}
	if c.cleanup {
		if err := c.datapath.cleanup(); err != nil {
			log.Error("cleanup failed", "err", err)
			os.Exit(1)
		}
		log.Info("datapath removed", "datapath", c.datapath.name)
		return
	}
	command.Run(log, "agent", func(ctx context.Context) error { return run(ctx, c, log) })
}

// restore programs the datapath from the state file, before anything else:
// the node forwards with its last known state even if nothing after works.
// A datapath that failed to open is the error to report first. The
// health-check node ports start from what was restored.
func restore(ctx context.Context, a *agent.Agent, dp *opening, hc *healthChecks, log *slog.Logger) error {
	// What the restore allocates it keeps (the decoded state file, 30 MB at
	// 10,000 services): collecting garbage meanwhile would only mark it
	// again at every doubling of the young heap. A memory limit still
	// holds.
	gcPercent := debug.SetGCPercent(-1)
	restoreErr := a.Restore(ctx)
	debug.SetGCPercent(gcPercent)
	if err := cmp.Or(dp.wait(), restoreErr); err != nil {
		return err
	}
	if st, err := a.GetState(ctx, nil); err != nil {
		log.Warn("health-check node ports wait for the first update", "err", err)
	} else {
		hc.applied(st.GetCached(), nil)
	}
	return nil
}

func run(ctx context.Context, c config, log *slog.Logger) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Closing the datapath releases the agent's handles only: what it
	// programmed stays in the kernel and keeps forwarding.
	dp := c.datapath.openInBackground(reg, log)
	defer dp.Close()
	dialOpts, err := c.transport(log)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(c.controlPlane, dialOpts...)
	if err != nil {
		return fmt.Errorf("control-plane client: %w", err)
	}
	defer conn.Close()

	var a *agent.Agent
	hcServer := healthcheck.New(healthcheck.Options{Healthy: func() bool { return a.Healthy() }})
	defer hcServer.Close()
	hc := newHealthChecks(hcServer, log)
	a, err = agent.New(agent.Options{
		NodeName: c.nodeName, Conn: conn, Datapath: dp, StatePath: c.stateFile,
		RepairInterval: c.repairInterval, Metrics: agent.NewMetrics(reg), Logger: log,
		OnApplied: hc.applied,
	})
	if err != nil {
		return err
	}
	if err := restore(ctx, a, dp, hc, log); err != nil {
		return err
	}

	g := grpcserver.New(reg)
	a.Register(g.Server)
	g.Ready()
	inspectLis, err := net.Listen("tcp", c.inspectAddr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", c.inspectAddr, err)
	}
	servers := c.httpServers(a, dp.Name(), reg)
	log.Info("agent serving", "node", c.nodeName, "datapath", dp.Name(), "inspect", inspectLis.Addr().String(), "healthz", c.healthzAddr, "metrics", c.metricsAddr)

	eg, ctx := errgroup.WithContext(ctx)
	eg.Go(func() error { return a.Run(ctx) })
	eg.Go(func() error { return g.Serve(inspectLis) })
	for _, s := range servers {
		lis, err := net.Listen("tcp", s.Addr)
		if err != nil {
			return fmt.Errorf("listening on %s: %w", s.Addr, err)
		}
		eg.Go(func() error {
			if err := s.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	eg.Go(func() error {
		<-ctx.Done()
		g.Stop()
		for _, s := range servers {
			shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			s.Shutdown(shutdownCtx)
			cancel()
		}
		return nil
	})
	return eg.Wait()
}

// httpServers are kube-proxy's endpoints: /healthz and /livez on
// -healthz-address, /metrics and /proxyMode on -metrics-address.
func (c config) httpServers(a *agent.Agent, mode string, reg *prometheus.Registry) []*http.Server {
	health := http.NewServeMux()
	health.Handle("/healthz", a.HealthzHandler())
	health.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	metrics := http.NewServeMux()
	metrics.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	metrics.HandleFunc("/proxyMode", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, mode) })
	return []*http.Server{
		{Addr: c.healthzAddr, Handler: health, ReadHeaderTimeout: 10 * time.Second},
		{Addr: c.metricsAddr, Handler: metrics, ReadHeaderTimeout: 10 * time.Second},
	}
}

// transport returns the dial options that secure the control-plane
// connection: TLS verified with -tls-ca-file, and the token sent only over
// it. Plaintext needs -insecure and never carries the token.
func (c config) transport(log *slog.Logger) ([]grpc.DialOption, error) {
	if c.keepalive.Time < agent.MinKeepaliveTime || c.keepalive.Timeout <= 0 {
		return nil, fmt.Errorf("-keepalive-time %v, -keepalive-timeout %v: want at least %v (the control plane refuses more frequent pings) and more than 0",
			c.keepalive.Time, c.keepalive.Timeout, agent.MinKeepaliveTime)
	}
	opts := agent.DialOptionsWith(c.keepalive)
	switch {
	case c.insecure:
		log.Warn("connecting to the control plane in plaintext (-insecure); no token is sent")
		return append(opts, grpc.WithTransportCredentials(insecure.NewCredentials())), nil
	case c.caFile == "":
		return nil, errors.New("refusing to connect without TLS: set -tls-ca-file, or -insecure for tests")
	}
	creds, err := tlsfiles.Client(tlsfiles.Files{CA: c.caFile, Cert: c.tlsCert, Key: c.tlsKey, Refresh: c.tlsRefresh})
	if err != nil {
		return nil, fmt.Errorf("TLS: %w", err)
	}
	opts = append(opts, grpc.WithTransportCredentials(creds))
	if c.tokenFile != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(&agent.TokenFile{Path: c.tokenFile}))
	}
	return opts, nil
}
