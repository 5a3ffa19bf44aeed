package lightfleet

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"

	"github.com/spoke-proxy/spoke/nodeagent/agent"
	"github.com/spoke-proxy/spoke/scale-sim/fleet"
)

// RunWorkerIfAsked runs the process as a fleet worker if WorkerEnv is set,
// and then exits; otherwise it returns at once.
func RunWorkerIfAsked() {
	if os.Getenv(WorkerEnv) == "" {
		return
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := runWorker(os.Stdin, os.Stdout, log); err != nil {
		log.Error("fleet worker stopped", "err", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// worker runs a slice of the fleet's nodes.
type worker struct {
	setup  *setup
	log    *slog.Logger
	codec  *codec
	creds  credentials.TransportCredentials
	events chan event
	rx     atomic.Uint64
	// connecting bounds the nodes that connect at once (MaxConnecting).
	connecting chan struct{}

	mu      sync.Mutex
	running map[int]*running

	internMu sync.RWMutex
	names    map[string]string
}

type running struct {
	agent  *lightAgent
	cancel context.CancelFunc
	done   chan struct{}
}

// runWorker reads commands from in until it is closed, and writes events
// to out.
func runWorker(in io.Reader, out io.Writer, log *slog.Logger) error {
	dec := gob.NewDecoder(bufio.NewReaderSize(in, 1<<16))
	var first command
	if err := dec.Decode(&first); err != nil {
		return fmt.Errorf("reading the setup: %w", err)
	}
	if first.Op != opSetup || first.Setup == nil {
		return errors.New("the first command is not the setup")
	}
	w := &worker{setup: first.Setup, log: log, events: make(chan event, 4096),
		running: map[int]*running{}, names: map[string]string{}, connecting: make(chan struct{}, max(1, first.Setup.MaxConnecting))}
	w.codec = &codec{proto: encoding.GetCodecV2("proto"), intern: w.intern}
	w.creds = insecure.NewCredentials()
	if len(w.setup.CAPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(w.setup.CAPEM) {
			return errors.New("the control plane's CA does not parse")
		}
		w.creds = credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	}
	written := make(chan error, 1)
	go func() { written <- w.write(out) }()
	var err error
	for {
		var c command
		if err = dec.Decode(&c); err != nil {
			break
		}
		if err = w.do(c); err != nil {
			break
		}
	}
	w.stopAll()
	close(w.events)
	if werr := <-written; werr != nil {
		return werr
	}
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// write sends the events to the parent, flushing whenever none is waiting.
func (w *worker) write(out io.Writer) error {
	bw := bufio.NewWriterSize(out, 1<<16)
	enc := gob.NewEncoder(bw)
	var err error
	for ev := range w.events {
		if err != nil {
			continue // drain, so that nodes never block
		}
		if err = enc.Encode(&ev); err == nil && len(w.events) == 0 {
			err = bw.Flush()
		}
	}
	if err != nil {
		return fmt.Errorf("writing events: %w", err)
	}
	return bw.Flush()
}

func (w *worker) do(c command) error {
	switch c.Op {
	case opStart:
		return w.start(c.Node)
	case opStop:
		w.stop(c.Node)
	case opState:
		w.events <- w.stateOf(c.Node, c.ID)
	case opRx:
		w.events <- event{Kind: evAnswer, ID: c.ID, Rx: w.rx.Load()}
	default:
		return fmt.Errorf("unknown command %d", c.Op)
	}
	return nil
}

func (w *worker) start(i int) error {
	spec, ok := w.setup.Nodes[i]
	if !ok {
		return fmt.Errorf("node %d is not this worker's", i)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.running[i] != nil {
		return fmt.Errorf("node %s already runs", spec.Name)
	}
	opts := append(agent.DialOptions(), grpc.WithTransportCredentials(w.creds),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			if err != nil {
				return nil, err
			}
			return &countingConn{Conn: c, n: &w.rx}, nil
		}))
	if spec.Token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(fleet.Bearer(spec.Token)))
	}
	conn, err := grpc.NewClient(w.setup.Address, opts...)
	if err != nil {
		return fmt.Errorf("node %s: connecting: %w", spec.Name, err)
	}
	a := newAgent(spec.Name, conn, w.codec, w.connecting, func(ap applied) {
		w.events <- event{Kind: evApplied, Node: i, At: ap.at.UnixNano(), Applied: ap.put, Removed: ap.removed}
	})
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{agent: a, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		defer conn.Close()
		if err := a.run(ctx); err != nil {
			w.log.Error("light agent stopped", "node", spec.Name, "err", err)
		}
	}()
	w.running[i] = r
	return nil
}

func (w *worker) stop(i int) {
	w.mu.Lock()
	r := w.running[i]
	delete(w.running, i)
	w.mu.Unlock()
	if r != nil {
		r.cancel()
		<-r.done
	}
}

func (w *worker) stopAll() {
	w.mu.Lock()
	all := w.running
	w.running = map[int]*running{}
	w.mu.Unlock()
	for _, r := range all {
		r.cancel()
	}
	for _, r := range all {
		<-r.done
	}
}

func (w *worker) stateOf(i int, id uint64) event {
	w.mu.Lock()
	r := w.running[i]
	w.mu.Unlock()
	ev := event{Kind: evAnswer, ID: id, Node: i}
	if r == nil {
		ev.Err = "not running"
		return ev
	}
	ev.Held = r.agent.state()
	r.agent.mu.Lock()
	ev.Acks, ev.Nacks, ev.LastNack = r.agent.acks, r.agent.nacks, r.agent.lastNack
	r.agent.mu.Unlock()
	return ev
}

// intern returns one string per resource name for the whole worker, so
// that thousands of nodes holding the same names keep one copy.
func (w *worker) intern(b []byte) string {
	w.internMu.RLock()
	s, ok := w.names[string(b)]
	w.internMu.RUnlock()
	if ok {
		return s
	}
	w.internMu.Lock()
	defer w.internMu.Unlock()
	if s, ok := w.names[string(b)]; ok {
		return s
	}
	s = string(b)
	w.names[s] = s
	return s
}

// countingConn counts the bytes a worker's nodes read: gRPC on the wire,
// with HTTP/2 framing (and TLS records, with --auth).
type countingConn struct {
	net.Conn
	n *atomic.Uint64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(uint64(n))
	return n, err
}
