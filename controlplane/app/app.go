// Package app assembles the control plane: the API watch, the view store,
// the stream and inspection services on one gRPC server, and the HTTP
// endpoints for metrics and health. The binary, the tests and the scale
// simulator all run it through here.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"k8s.io/client-go/kubernetes"

	"github.com/spoke-proxy/spoke/controlplane/model"
	"github.com/spoke-proxy/spoke/controlplane/server"
	"github.com/spoke-proxy/spoke/controlplane/store"
	"github.com/spoke-proxy/spoke/controlplane/watch"
	"github.com/spoke-proxy/spoke/internal/grpcserver"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// Options configure a control plane.
type Options struct {
	Client kubernetes.Interface
	// GRPCListener serves the view stream and inspection services.
	GRPCListener net.Listener
	// HTTPListener serves /metrics, /healthz (the first state is
	// published), /readyz (and the API server answers, and no watch has
	// stalled) and /livez; none when nil. With it, the view service's gRPC
	// health follows /readyz (agents open streams only where it is
	// SERVING); without it, the view service is always SERVING.
	HTTPListener net.Listener
	// GRPCOptions are extra server options, such as TLS credentials.
	GRPCOptions []grpc.ServerOption
	// Authenticator binds streams to nodes; see server.Options.
	Authenticator server.Authenticator
	// Inspector authorizes the inspection service's calls; they are open
	// to anyone who reaches GRPCListener when nil.
	Inspector server.Inspector
	Model     model.Options
	// Debounce window and maximum delay; see watch.Options.
	Window, MaxDelay time.Duration
	AckTimeout       time.Duration
	MaxResponseBytes int
	// MaxViewBytes rejects services with a larger view; see
	// store.Options.
	MaxViewBytes int
	// Limits bound what agent streams cost before they are bound to a
	// node; see server.Limits.
	Limits server.Limits
	// Profiling serves net/http/pprof under /debug/pprof/ on the HTTP
	// listener.
	Profiling bool
	// APIStaleAfter makes /readyz fail once the API server has not
	// answered for this long: the watches then cannot be following it.
	// 0 means 30 s. The API server is asked every APIStaleAfter/6.
	APIStaleAfter time.Duration
	// WatchStallAfter makes /readyz fail once a watch (Services,
	// EndpointSlices or Nodes) has heard nothing from the API server for
	// this long, even though the API server answers: no list, no new watch,
	// no event and no bookmark. The API server's watch cache sends a
	// bookmark about every minute, so a few minutes means a watch that
	// stopped, not a quiet cluster. 0 means 3 minutes.
	WatchStallAfter time.Duration
	Logger          *slog.Logger
}

// DefaultWatchStallAfter is Options.WatchStallAfter's default: three of
// the API server's once-a-minute bookmarks missed.
const DefaultWatchStallAfter = 3 * time.Minute

// ControlPlane is an assembled control plane.
type ControlPlane struct {
	opts     Options
	Store    *store.Store
	Server   *server.Server
	Registry *prometheus.Registry
	watcher  *watch.Watcher
	grpc     *grpcserver.Server
	// apiSeen is when the API server last answered (Unix nanoseconds).
	apiSeen atomic.Int64
}

// New assembles a control plane; Run serves it.
func New(opts Options) (*ControlPlane, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.APIStaleAfter == 0 {
		opts.APIStaleAfter = 30 * time.Second
	}
	if opts.WatchStallAfter == 0 {
		opts.WatchStallAfter = DefaultWatchStallAfter
	}
	c := &ControlPlane{opts: opts, Registry: prometheus.NewRegistry()}
	c.Store = store.NewWithOptions(store.Options{
		MaxViewBytes: opts.MaxViewBytes, Registerer: c.Registry,
		Logger: opts.Logger.With("component", "store"),
	})
	c.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var err error
	c.watcher, err = watch.New(watch.Options{
		Client: opts.Client, Store: c.Store, Model: opts.Model,
		Window: opts.Window, MaxDelay: opts.MaxDelay,
		Registerer: c.Registry, Logger: opts.Logger.With("component", "watch"),
	})
	if err != nil {
		return nil, err
	}
	c.Server = server.New(server.Options{
		Store: c.Store, Authenticator: opts.Authenticator, AckTimeout: opts.AckTimeout,
		MaxResponseBytes: opts.MaxResponseBytes, Limits: opts.Limits, Registerer: c.Registry,
		Logger: opts.Logger.With("component", "server"),
	})
	grpcOpts := append(server.ServerOptions(), opts.GRPCOptions...)
	if opts.Inspector != nil {
		grpcOpts = append(grpcOpts, grpc.ChainUnaryInterceptor(server.InspectionInterceptor(opts.Inspector)))
	}
	c.grpc = grpcserver.New(c.Registry, grpcOpts...)
	c.Server.Register(c.grpc.Server)
	c.grpc.Ready()
	return c, nil
}

// Run serves until ctx is done or a part fails.
func (c *ControlPlane) Run(ctx context.Context) error {
	eg, ctx := errgroup.WithContext(ctx)
	eg.Go(func() error { return c.watcher.Run(ctx) })
	eg.Go(func() error {
		// Connections wait in the listener's backlog until the first state
		// is published: a starting replica spends nothing on the TLS
		// handshakes and tokens of agents it cannot serve yet (thousands
		// after a restart), so its informers sync as fast as with none.
		select {
		case <-c.Store.Ready():
		case <-ctx.Done():
			c.opts.GRPCListener.Close()
			return nil
		}
		// Stop may come first when ctx ends as the state is published.
		if err := c.grpc.Serve(c.opts.GRPCListener); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serving gRPC: %w", err)
		}
		return nil
	})
	var httpSrv *http.Server
	if c.opts.HTTPListener != nil {
		c.apiSeen.Store(time.Now().UnixNano()) // before followReadiness reads it
		eg.Go(func() error { c.probeAPI(ctx); return nil })
		eg.Go(func() error { c.followReadiness(ctx); return nil })
		httpSrv = &http.Server{Handler: c.httpHandler(), ReadHeaderTimeout: 10 * time.Second}
		eg.Go(func() error {
			if err := httpSrv.Serve(c.opts.HTTPListener); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serving HTTP: %w", err)
			}
			return nil
		})
	}
	eg.Go(func() error {
		<-ctx.Done()
		c.grpc.Stop()
		if httpSrv != nil {
			shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return httpSrv.Shutdown(shutdownCtx)
		}
		return nil
	})
	return eg.Wait()
}

// probeAPI asks the API server's /readyz every APIStaleAfter/6 and records
// when it last answered. client-go's reflectors retry a refused watch
// without telling anyone, so the watches' health is read from the server
// they follow.
func (c *ControlPlane) probeAPI(ctx context.Context) {
	c.apiSeen.Store(time.Now().UnixNano())
	rc := c.opts.Client.Discovery().RESTClient()
	tick := time.NewTicker(c.opts.APIStaleAfter / 6)
	defer tick.Stop()
	failing := false
	var stalled map[string]bool
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		pctx, cancel := context.WithTimeout(ctx, c.opts.APIStaleAfter/6)
		err := rc.Get().AbsPath("/readyz").Do(pctx).Error()
		cancel()
		switch {
		case err == nil:
			c.apiSeen.Store(time.Now().UnixNano())
			if failing {
				c.opts.Logger.Info("the API server answers again")
			}
			failing = false
		case !failing && ctx.Err() == nil:
			c.opts.Logger.Warn("the API server does not answer; /readyz fails once this lasts", "err", err, "after", c.opts.APIStaleAfter)
			failing = true
		}
		stalled = c.logStalls(stalled)
	}
}

// logStalls logs the watches that stalled or recovered since the kinds in
// before were stalled, and returns the kinds stalled now.
func (c *ControlPlane) logStalls(before map[string]bool) map[string]bool {
	now := map[string]bool{}
	for _, s := range c.watcher.Stalled(c.opts.WatchStallAfter) {
		now[s.Kind] = true
		if !before[s.Kind] {
			c.opts.Logger.Warn("a watch has stalled; /readyz fails until it hears from the API server again", "kind", s.Kind, "silent", s.Silent.Round(time.Second))
		}
	}
	for kind := range before {
		if !now[kind] {
			c.opts.Logger.Info("a stalled watch hears from the API server again", "kind", kind)
		}
	}
	return now
}

// notReady says why the replica is not ready, or returns nil: its first
// state is published, the API server, which the watches follow, answered
// lately, and every watch heard from it lately.
func (c *ControlPlane) notReady() error {
	select {
	case <-c.Store.Ready():
	default:
		return errors.New("waiting for the API watch to sync")
	}
	if since := time.Since(time.Unix(0, c.apiSeen.Load())); since > c.opts.APIStaleAfter {
		return fmt.Errorf("the API server has not answered for %s: the views may be stale", since.Round(time.Second))
	}
	if stalls := c.watcher.Stalled(c.opts.WatchStallAfter); len(stalls) > 0 {
		return fmt.Errorf("%s: the views may be stale", stalls[0])
	}
	return nil
}

// viewService is the name agents health-check (agent.DialOptions) before
// they open a stream on a connection.
var viewService = spokev1.ViewService_ServiceDesc.ServiceName

// readinessPoll is how often the view service's gRPC health is set from
// notReady.
const readinessPoll = 500 * time.Millisecond

// followReadiness keeps the view service's gRPC health equal to /readyz:
// NOT_SERVING while the replica is not ready, so that agents, which check
// it on every connection, open no new stream here and go to a replica that
// is (streams open already go on). Readiness alone would only reach
// clients behind a load balancer that probes it.
func (c *ControlPlane) followReadiness(ctx context.Context) {
	tick := time.NewTicker(readinessPoll)
	defer tick.Stop()
	serving := true           // as grpcserver.Ready left it
	synced := c.Store.Ready() // the first state: agents wait for no tick
	for {
		err := c.notReady()
		if ready := err == nil; ready != serving {
			serving = ready
			if ready {
				c.grpc.Health.SetServingStatus(viewService, healthpb.HealthCheckResponse_SERVING)
				c.opts.Logger.Info("ready: taking new agent streams")
			} else {
				c.grpc.Health.SetServingStatus(viewService, healthpb.HealthCheckResponse_NOT_SERVING)
				c.opts.Logger.Warn("not ready: new agent streams go to other replicas", "reason", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-synced:
			synced = nil
		case <-tick.C:
		}
	}
}

func (c *ControlPlane) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(c.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		select {
		case <-c.Store.Ready():
			fmt.Fprintln(w, "ok")
		default:
			http.Error(w, "waiting for the API watch to sync", http.StatusServiceUnavailable)
		}
	})
	// /readyz is what a readiness probe asks: the first state is published,
	// the API server, which the watches follow, answered lately, and every
	// watch heard from it lately.
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := c.notReady(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	if c.opts.Profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}
