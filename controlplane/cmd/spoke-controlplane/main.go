// Command spoke-controlplane watches the Kubernetes API once and streams
// each node agent its node's service view.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/spoke-proxy/spoke/controlplane/app"
	"github.com/spoke-proxy/spoke/controlplane/auth"
	"github.com/spoke-proxy/spoke/controlplane/model"
	"github.com/spoke-proxy/spoke/controlplane/server"
	"github.com/spoke-proxy/spoke/controlplane/watch"
	"github.com/spoke-proxy/spoke/internal/command"
	"github.com/spoke-proxy/spoke/internal/tlsfiles"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

type config struct {
	kubeconfig     string
	grpcAddr       string
	metricsAddr    string
	profiling      bool
	proxyName      string
	window         time.Duration
	maxDelay       time.Duration
	ackTimeout     time.Duration
	tlsCert        string
	tlsKey         string
	tlsClientCA    string
	tlsRefresh     time.Duration
	insecure       bool
	logging        command.Logging
	apiQPS         float64
	apiBurst       int
	maxResponseMiB int
	maxViewBytes   int
	authMode       string
	audience       string
	agentAccounts  string
	limits         server.Limits
	watchStall     time.Duration
}

func main() {
	var c config
	flag.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig file; in-cluster configuration when empty")
	flag.StringVar(&c.grpcAddr, "grpc-address", ":18000", "address of the view stream and inspection gRPC services")
	flag.StringVar(&c.metricsAddr, "metrics-address", ":9091", "address of /metrics, /healthz and /livez")
	flag.StringVar(&c.proxyName, "proxy-name", "spoke", "this proxy's name for the service.kubernetes.io/service-proxy-name label")
	flag.DurationVar(&c.window, "debounce-window", watch.DefaultWindow, "quiet time that ends a burst of API changes")
	flag.DurationVar(&c.maxDelay, "debounce-max-delay", watch.DefaultMaxDelay, "longest a change waits for its burst to end")
	flag.DurationVar(&c.ackTimeout, "ack-timeout", time.Minute, "disconnect an agent that has not acknowledged a response in this time")
	flag.StringVar(&c.tlsCert, "tls-cert-file", "", "serving certificate of the gRPC services; required unless -insecure")
	flag.BoolVar(&c.insecure, "insecure", false, "serve gRPC in plaintext (tests and local demos only)")
	flag.StringVar(&c.tlsKey, "tls-key-file", "", "key of -tls-cert-file")
	flag.StringVar(&c.tlsClientCA, "tls-client-ca-file", "", "CA bundle that signs agents' client certificates; when set, every client must present one (mutual TLS), besides its token")
	flag.DurationVar(&c.tlsRefresh, "tls-refresh-interval", tlsfiles.DefaultRefresh, "how often the certificate, key and client CA files are read again, so that rotated ones apply without a restart")
	c.logging.Register(flag.CommandLine)
	flag.Float64Var(&c.apiQPS, "kube-api-qps", 50, "queries per second to the API server")
	flag.IntVar(&c.apiBurst, "kube-api-burst", 100, "burst of queries to the API server")
	flag.IntVar(&c.maxResponseMiB, "max-response-mib", 4, "split view responses larger than this")
	flag.IntVar(&c.maxViewBytes, "max-view-bytes", spokev1.MaxViewBytes, "hold back a service whose encoded view is larger than this (at most the default, which every agent can receive)")
	flag.StringVar(&c.authMode, "agent-auth", "token", "how agents are bound to nodes: token (their pod-bound ServiceAccount token, verified against the API server's issuer keys and with a TokenReview for other issuers), tokenreview (the same token, always with a TokenReview), or none (trust the node name they send; tests only)")
	flag.StringVar(&c.audience, "agent-token-audience", "spoke-controlplane", "audience agents' tokens must be issued for")
	flag.StringVar(&c.agentAccounts, "agent-service-accounts", "kube-system/spoke-agent", "comma-separated namespace/name of the agents' ServiceAccounts")
	flag.DurationVar(&c.limits.FirstRequestTimeout, "first-request-timeout", 10*time.Second, "end an agent stream whose first request has not arrived in this time")
	flag.IntVar(&c.limits.MaxPendingPerPeer, "max-pending-streams-per-peer", 16, "streams of one address without an identity yet; -1 for no limit")
	flag.IntVar(&c.limits.MaxPending, "max-pending-streams", 1024, "streams without an identity yet; -1 for no limit")
	flag.IntVar(&c.limits.MaxStreams, "max-streams", 100_000, "streams served at once; -1 for no limit")
	flag.Float64Var(&c.limits.NewStreamsPerSecond, "new-streams-per-second", 2000, "rate of new streams (a token bucket); -1 for no limit")
	flag.IntVar(&c.limits.NewStreamsBurst, "new-streams-burst", 5000, "burst of new streams")
	flag.DurationVar(&c.watchStall, "watch-stall-timeout", app.DefaultWatchStallAfter, "fail /readyz once a watch (Services, EndpointSlices, Nodes) has heard nothing from the API server for this long, no event, no bookmark, no new list or watch; the API server sends a bookmark about every minute (raise it above 10m for API servers without watch bookmarks)")
	flag.BoolVar(&c.profiling, "profiling", false, "serve /debug/pprof/ on the metrics address")
	flag.Parse()

	log := c.logging.Logger()
	command.Run(log, "control plane", func(ctx context.Context) error { return run(ctx, c, log) })
}

func run(ctx context.Context, c config, log *slog.Logger) error {
	if c.maxViewBytes <= 0 || c.maxViewBytes > spokev1.MaxViewBytes {
		return fmt.Errorf("-max-view-bytes %d: want 1 to %d, the most an agent can receive", c.maxViewBytes, spokev1.MaxViewBytes)
	}
	if maxMiB := spokev1.MaxMessageBytes >> 20; c.maxResponseMiB <= 0 || c.maxResponseMiB > maxMiB {
		return fmt.Errorf("-max-response-mib %d: want 1 to %d, the most an agent can receive", c.maxResponseMiB, maxMiB)
	}
	grpcOpts, closeTLS, err := c.transport(log)
	if err != nil {
		return err
	}
	defer closeTLS()
	restConfig, err := loadConfig(c.kubeconfig)
	if err != nil {
		return err
	}
	restConfig.QPS, restConfig.Burst = float32(c.apiQPS), c.apiBurst
	restConfig.UserAgent = "spoke-controlplane"
	client, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return fmt.Errorf("creating API client: %w", err)
	}

	lis, err := net.Listen("tcp", listenAddress(c.grpcAddr))
	if err != nil {
		return fmt.Errorf("listening on %s: %w", c.grpcAddr, err)
	}
	httpLis, err := net.Listen("tcp", listenAddress(c.metricsAddr))
	if err != nil {
		return fmt.Errorf("listening on %s: %w", c.metricsAddr, err)
	}
	authn, inspector, err := c.authentication(ctx, client, log)
	if err != nil {
		return err
	}
	cp, err := app.New(app.Options{
		Client: client, Authenticator: authn, Inspector: inspector, GRPCListener: lis, HTTPListener: httpLis, GRPCOptions: grpcOpts,
		Model: model.Options{ProxyName: c.proxyName}, Window: c.window, MaxDelay: c.maxDelay,
		AckTimeout: c.ackTimeout, MaxResponseBytes: c.maxResponseMiB << 20, MaxViewBytes: c.maxViewBytes, Limits: c.limits, Profiling: c.profiling, WatchStallAfter: c.watchStall, Logger: log,
	})
	if err != nil {
		return err
	}
	if authn, ok := authn.(*auth.Authenticator); ok {
		cp.Registry.MustRegister(authn)
	}
	log.Info("control plane serving", "grpc", lis.Addr().String(), "metrics", httpLis.Addr().String())
	return cp.Run(ctx)
}

func loadConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster configuration (set -kubeconfig outside a cluster): %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("loading kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}

// listenAddress accepts an IPv6 address without brackets before the port
// ("fd00::1:18000"), as a pod IP substituted into "$(POD_IP):18000" gives
// it; other addresses are returned as they are.
func listenAddress(addr string) string {
	if strings.Count(addr, ":") < 2 || strings.HasPrefix(addr, "[") {
		return addr
	}
	i := strings.LastIndex(addr, ":")
	return net.JoinHostPort(addr[:i], addr[i+1:])
}

// transport returns the server options that secure the gRPC services, and
// what stops watching the certificate files: TLS from -tls-cert-file (with
// client certificates required when -tls-client-ca-file is set), or
// plaintext with -insecure only.
func (c config) transport(log *slog.Logger) ([]grpc.ServerOption, func(), error) {
	switch {
	case c.insecure:
		log.Warn("serving gRPC in plaintext (-insecure)")
		return nil, func() {}, nil
	case c.tlsCert == "":
		return nil, nil, errors.New("refusing to serve without TLS: set -tls-cert-file and -tls-key-file, or -insecure for tests")
	}
	creds, err := tlsfiles.Server(tlsfiles.Files{Cert: c.tlsCert, Key: c.tlsKey, CA: c.tlsClientCA, Refresh: c.tlsRefresh})
	if err != nil {
		return nil, nil, fmt.Errorf("TLS: %w", err)
	}
	return []grpc.ServerOption{grpc.Creds(creds)}, creds.Close, nil
}

// authentication returns what binds agents to nodes and what authorizes
// inspection, as -agent-auth says.
func (c config) authentication(ctx context.Context, client kubernetes.Interface, log *slog.Logger) (server.Authenticator, server.Inspector, error) {
	switch c.authMode {
	case "token", "tokenreview":
		accounts := strings.Split(c.agentAccounts, ",")
		opts := auth.Options{Client: client, Audience: c.audience, ServiceAccounts: accounts}
		if c.authMode == "token" {
			keys, err := auth.DiscoverIssuer(ctx, client.Discovery().RESTClient())
			if err != nil {
				log.Warn("verifying every agent token with a TokenReview: the API server's issuer keys are not readable", "err", err)
			} else {
				opts.Keys = keys
				log.Info("verifying agent tokens against the API server's issuer keys", "issuer", keys.Issuer)
			}
			pods, err := auth.WatchAgentPods(ctx, client, accounts)
			if err != nil {
				return nil, nil, err
			}
			go func() {
				wctx, cancel := context.WithTimeout(ctx, time.Minute)
				defer cancel()
				if err := pods.WaitSynced(wctx); err != nil && ctx.Err() == nil {
					log.Error("agent streams wait for the agents' pods, which cannot be listed (RBAC: list and watch pods in the agents' namespace)", "err", err)
				}
			}()
			opts.Pods = pods
		}
		authn, err := auth.New(opts)
		if err != nil {
			return nil, nil, err
		}
		return authn, auth.NewInspector(authn), nil
	case "none":
		log.Warn("agents are not authenticated: any client may read any node's view")
		log.Warn("inspection is not authorized: anyone who reaches the gRPC port may list nodes and read their views")
		return server.ClaimedNode{}, nil, nil
	default:
		return nil, nil, fmt.Errorf("-agent-auth %q: want token, tokenreview or none", c.authMode)
	}
}
