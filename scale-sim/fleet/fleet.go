package fleet

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/spoke-proxy/spoke/datapath/memory"
	"github.com/spoke-proxy/spoke/nodeagent/agent"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// Options configure a Fleet.
type Options struct {
	// Names of the nodes, by index.
	Names []string
	// Address of the control plane's gRPC services.
	Address string
	// StateDir holds each node's bbolt state file; "" keeps none.
	StateDir string
	// OnApplied is called from each node's agent after it applied a
	// response.
	OnApplied func(node int, at time.Time, applied []*spokev1.Resource, removed []string)
	// TLS secures the connections; plaintext when nil.
	TLS *tls.Config
	// Tokens are the nodes' agent tokens, by index, sent as bearer tokens
	// (over TLS only); none are sent when nil.
	Tokens []string
	Logger *slog.Logger
}

// Fleet is the simulated nodes: each runs the real agent, with its own
// gRPC connection and an in-memory datapath. It is safe for concurrent use.
type Fleet struct {
	opts   Options
	codec  *internCodec
	shared *sharedDecoder
	nodes  []*Node
	rx     atomic.Uint64
}

// Node is one simulated node.
type Node struct {
	Index int
	Name  string

	// slowRate limits how fast the node reads from the control plane, in
	// bytes per second; 0 is no limit.
	slowRate atomic.Int64

	mu       sync.Mutex
	agent    *agent.Agent
	datapath *memory.Datapath
	conn     *grpc.ClientConn
	cancel   context.CancelFunc
	done     chan struct{}
}

// New returns a fleet of stopped nodes.
func New(opts Options) *Fleet {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	f := &Fleet{opts: opts, codec: newInternCodec(), shared: newSharedDecoder()}
	for i, name := range opts.Names {
		f.nodes = append(f.nodes, &Node{Index: i, Name: name})
	}
	return f
}

// Len returns the number of nodes.
func (f *Fleet) Len() int { return len(f.nodes) }

// Node returns node i.
func (f *Fleet) Node(i int) *Node { return f.nodes[i] }

// RxBytes returns the bytes every node has read from the control plane:
// gRPC on the wire, with HTTP/2 framing.
func (f *Fleet) RxBytes() uint64 { return f.rx.Load() }

// SetSlow limits node i's reads to rate bytes per second (0: no limit).
func (f *Fleet) SetSlow(i int, rate int64) { f.nodes[i].slowRate.Store(rate) }

// Start starts node i's agent: it opens its state file, programs its
// datapath from it and connects. It returns how long the agent took to be
// ready, that is to have programmed its datapath from its state file.
func (f *Fleet) Start(i int) (time.Duration, error) {
	n := f.nodes[i]
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.agent != nil {
		return 0, fmt.Errorf("node %s already runs", n.Name)
	}
	conn, err := grpc.NewClient(f.opts.Address, f.dialOptions(n)...)
	if err != nil {
		return 0, fmt.Errorf("node %s: connecting: %w", n.Name, err)
	}
	start := time.Now()
	dp := memory.New(memory.Options{})
	opts := agent.Options{
		NodeName: n.Name, Conn: conn, Datapath: dp, Decoder: f.shared,
		Logger: f.opts.Logger.With("node", n.Name),
	}
	if f.opts.StateDir != "" {
		opts.StatePath = filepath.Join(f.opts.StateDir, n.Name+".db")
	}
	if f.opts.OnApplied != nil {
		opts.OnApplied = func(applied []*spokev1.Resource, removed []string) {
			f.opts.OnApplied(i, time.Now(), applied, removed)
		}
	}
	a, err := agent.New(opts)
	if err != nil {
		conn.Close()
		return 0, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := a.Restore(ctx); err != nil {
		cancel()
		conn.Close()
		return 0, fmt.Errorf("node %s: %w", n.Name, err)
	}
	ready := time.Since(start)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.Run(ctx); err != nil {
			f.opts.Logger.Error("agent stopped", "node", n.Name, "err", err)
		}
	}()
	n.agent, n.datapath, n.conn, n.cancel, n.done = a, dp, conn, cancel, done
	return ready, nil
}

// Stop stops node i's agent and closes its connection, as a stopped
// process would.
func (f *Fleet) Stop(i int) {
	n := f.nodes[i]
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.agent == nil {
		return
	}
	n.cancel()
	<-n.done
	n.conn.Close()
	n.agent, n.datapath, n.conn, n.cancel, n.done = nil, nil, nil, nil, nil
}

// StopAll stops every node.
func (f *Fleet) StopAll() {
	var wg sync.WaitGroup
	for i := range f.nodes {
		wg.Go(func() { f.Stop(i) })
	}
	wg.Wait()
}

// State returns node i's applied versions and its datapath's programmed
// services, or an error if it does not run.
func (f *Fleet) State(ctx context.Context, i int) (*spokev1.GetStateResponse, *memory.Datapath, error) {
	n := f.nodes[i]
	n.mu.Lock()
	a, dp := n.agent, n.datapath
	n.mu.Unlock()
	if a == nil {
		return nil, nil, errors.New("not running")
	}
	st, err := a.GetState(ctx, &spokev1.GetStateRequest{})
	return st, dp, err
}

func (f *Fleet) dialOptions(n *Node) []grpc.DialOption {
	creds := insecure.NewCredentials()
	if f.opts.TLS != nil {
		creds = credentials.NewTLS(f.opts.TLS)
	}
	opts := append(agent.DialOptions(),
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(f.codec)),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			if err != nil {
				return nil, err
			}
			return &countingConn{Conn: c, fleet: f, node: n}, nil
		}),
	)
	if f.opts.Tokens != nil {
		opts = append(opts, grpc.WithPerRPCCredentials(Bearer(f.opts.Tokens[n.Index])))
	}
	return opts
}

// countingConn counts what a node reads, and reads slowly when the node is
// set slow.
type countingConn struct {
	net.Conn
	fleet *Fleet
	node  *Node
}

func (c *countingConn) Read(p []byte) (int, error) {
	rate := c.node.slowRate.Load()
	if rate > 0 && len(p) > 1024 {
		p = p[:1024]
	}
	n, err := c.Conn.Read(p)
	c.fleet.rx.Add(uint64(n))
	if rate > 0 && n > 0 {
		time.Sleep(time.Duration(n) * time.Second / time.Duration(rate))
	}
	return n, err
}
