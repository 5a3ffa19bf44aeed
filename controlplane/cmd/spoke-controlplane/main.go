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
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/spoke-proxy/spoke/controlplane/model"
	"github.com/spoke-proxy/spoke/controlplane/server"
	"github.com/spoke-proxy/spoke/controlplane/store"
	"github.com/spoke-proxy/spoke/controlplane/watch"
	"github.com/spoke-proxy/spoke/internal/grpcserver"
	"github.com/spoke-proxy/spoke/internal/logging"
)

type config struct {
	kubeconfig     string
	grpcAddr       string
	metricsAddr    string
	proxyName      string
	window         time.Duration
	maxDelay       time.Duration
	ackTimeout     time.Duration
	tlsCert        string
	tlsKey         string
	logLevel       string
	logFormat      string
	apiQPS         float64
	apiBurst       int
	maxResponseMiB int
}

func main() {
	var c config
	flag.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig file; in-cluster configuration when empty")
	flag.StringVar(&c.grpcAddr, "grpc-address", ":18000", "address of the view stream and inspection gRPC services")
	flag.StringVar(&c.metricsAddr, "metrics-address", ":9091", "address of /metrics, /healthz and /livez")
	flag.StringVar(&c.proxyName, "proxy-name", "spoke", "this proxy's name for the service.kubernetes.io/service-proxy-name label")
	flag.DurationVar(&c.window, "debounce-window", 100*time.Millisecond, "quiet time that ends a burst of API changes")
	flag.DurationVar(&c.maxDelay, "debounce-max-delay", time.Second, "longest a change waits for its burst to end")
	flag.DurationVar(&c.ackTimeout, "ack-timeout", time.Minute, "disconnect an agent that has not acknowledged a response in this time")
	flag.StringVar(&c.tlsCert, "tls-cert-file", "", "serving certificate of the gRPC services; plaintext when empty")
	flag.StringVar(&c.tlsKey, "tls-key-file", "", "key of -tls-cert-file")
	flag.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	flag.StringVar(&c.logFormat, "log-format", "text", "text or json")
	flag.Float64Var(&c.apiQPS, "kube-api-qps", 50, "queries per second to the API server")
	flag.IntVar(&c.apiBurst, "kube-api-burst", 100, "burst of queries to the API server")
	flag.IntVar(&c.maxResponseMiB, "max-response-mib", 4, "split view responses larger than this")
	flag.Parse()

	log, err := logging.New(os.Stderr, c.logLevel, c.logFormat)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c, log); err != nil {
		log.Error("control plane failed", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, c config, log *slog.Logger) error {
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

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	views := store.New()
	watcher, err := watch.New(watch.Options{
		Client: client, Store: views, Model: model.Options{ProxyName: c.proxyName},
		Window: c.window, MaxDelay: c.maxDelay, Registerer: reg, Logger: log.With("component", "watch"),
	})
	if err != nil {
		return err
	}
	srv := server.New(server.Options{
		Store: views, AckTimeout: c.ackTimeout, MaxResponseBytes: c.maxResponseMiB << 20,
		Registerer: reg, Logger: log.With("component", "server"),
	})
	grpcOpts := server.ServerOptions()
	if c.tlsCert != "" {
		creds, err := credentials.NewServerTLSFromFile(c.tlsCert, c.tlsKey)
		if err != nil {
			return fmt.Errorf("loading TLS certificate: %w", err)
		}
		grpcOpts = append(grpcOpts, grpc.Creds(creds))
	} else {
		log.Warn("serving gRPC in plaintext: set -tls-cert-file outside tests")
	}
	g := grpcserver.New(reg, grpcOpts...)
	srv.Register(g.Server)
	g.Ready()

	lis, err := net.Listen("tcp", c.grpcAddr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", c.grpcAddr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		select {
		case <-views.Ready():
			fmt.Fprintln(w, "ok")
		default:
			http.Error(w, "waiting for the API watch to sync", http.StatusServiceUnavailable)
		}
	})
	httpSrv := &http.Server{Addr: c.metricsAddr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	httpLis, err := net.Listen("tcp", c.metricsAddr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", c.metricsAddr, err)
	}
	log.Info("control plane serving", "grpc", lis.Addr().String(), "metrics", httpLis.Addr().String())

	eg, ctx := errgroup.WithContext(ctx)
	eg.Go(func() error { return watcher.Run(ctx) })
	eg.Go(func() error { return g.Serve(lis) })
	eg.Go(func() error {
		if err := httpSrv.Serve(httpLis); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	eg.Go(func() error {
		<-ctx.Done()
		g.Stop()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return httpSrv.Shutdown(shutdownCtx)
	})
	return eg.Wait()
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
