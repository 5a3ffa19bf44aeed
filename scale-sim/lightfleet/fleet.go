package lightfleet

import (
	"bufio"
	"context"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// Options configure a Fleet.
type Options struct {
	// Names of the nodes, by index.
	Names []string
	// Address of the control plane's gRPC services.
	Address string
	// CAPEM are the certificates the control plane's serving certificate
	// chains to; the nodes connect in plaintext when nil.
	CAPEM []byte
	// Tokens are the nodes' agent tokens, by index, sent as bearer tokens
	// (over TLS only); none are sent when nil.
	Tokens []string
	// Processes is how many worker processes share the nodes.
	Processes int
	// MaxConnecting is how many nodes of each worker may wait at once for
	// the first response of a stream: more wait to connect. A control
	// plane short of CPU otherwise accepts connections more slowly than
	// thousands of nodes open them; its accept queue fills with
	// connections their clients have given up on (after 5 s), and
	// connecting stalls. 0 is 64.
	MaxConnecting int
	// OnApplied is called, in order for each node, with what the node
	// applied and when.
	OnApplied func(node int, at time.Time, applied []*spokev1.Resource, removed []string)
	// LogDir receives each worker's log, worker-N.log.
	LogDir string
	// Executable is the program run as a worker (with WorkerEnv set);
	// this process's own executable when empty.
	Executable string
}

// ErrNotRunning is returned for the state of a node that does not run.
var ErrNotRunning = errors.New("not running")

// Fleet is the light agents in their worker processes. It is safe for
// concurrent use.
type Fleet struct {
	opts    Options
	workers []*workerProc
	nextID  atomic.Uint64
}

// workerProc is the parent's end of one worker process.
type workerProc struct {
	index  int
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	exited chan struct{}

	sendMu sync.Mutex
	buf    *bufio.Writer
	enc    *gob.Encoder

	mu      sync.Mutex
	pending map[uint64]chan event
	err     error // why the worker's events ended
}

// Start starts the worker processes, each owning a contiguous slice of
// the nodes; no node runs yet.
func Start(opts Options) (*Fleet, error) {
	if opts.Processes < 1 {
		return nil, errors.New("a light fleet needs at least one worker process")
	}
	if opts.Tokens != nil && len(opts.Tokens) != len(opts.Names) {
		return nil, fmt.Errorf("%d tokens for %d nodes", len(opts.Tokens), len(opts.Names))
	}
	if opts.Executable == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("finding the executable to run workers: %w", err)
		}
		opts.Executable = exe
	}
	if opts.MaxConnecting == 0 {
		opts.MaxConnecting = 64
	}
	f := &Fleet{opts: opts}
	for k := range opts.Processes {
		lo, hi := f.slice(k)
		s := &setup{Address: opts.Address, CAPEM: opts.CAPEM, Nodes: make(map[int]nodeSpec, hi-lo), MaxConnecting: opts.MaxConnecting}
		for i := lo; i < hi; i++ {
			ns := nodeSpec{Name: opts.Names[i]}
			if opts.Tokens != nil {
				ns.Token = opts.Tokens[i]
			}
			s.Nodes[i] = ns
		}
		w, err := f.startWorker(k, s)
		if w != nil {
			f.workers = append(f.workers, w)
		}
		if err != nil {
			f.Close()
			return nil, err
		}
	}
	return f, nil
}

// slice returns the nodes [lo, hi) of worker k.
func (f *Fleet) slice(k int) (lo, hi int) {
	n, p := len(f.opts.Names), f.opts.Processes
	return k * n / p, (k + 1) * n / p
}

func (f *Fleet) workerOf(i int) *workerProc {
	n, p := len(f.opts.Names), f.opts.Processes
	k := i * p / n
	// Integer division can place i one slice off at the borders.
	for lo, _ := f.slice(k); i < lo; lo, _ = f.slice(k) {
		k--
	}
	for _, hi := f.slice(k); i >= hi; _, hi = f.slice(k) {
		k++
	}
	return f.workers[k]
}

func (f *Fleet) startWorker(k int, s *setup) (*workerProc, error) {
	logPath := filepath.Join(f.opts.LogDir, fmt.Sprintf("worker-%d.log", k))
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("fleet worker %d's log: %w", k, err)
	}
	cmd := exec.Command(f.opts.Executable)
	cmd.Env = append(os.Environ(), WorkerEnv+"=1")
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting fleet worker %d (%s): %w", k, f.opts.Executable, err)
	}
	w := &workerProc{index: k, cmd: cmd, stdin: stdin, exited: make(chan struct{}), pending: map[uint64]chan event{}}
	w.buf = bufio.NewWriterSize(stdin, 1<<16)
	w.enc = gob.NewEncoder(w.buf)
	go func() {
		w.read(stdout, f.opts.OnApplied, logPath)
		cmd.Wait()
		logFile.Close()
		close(w.exited)
	}()
	if err := w.send(command{Op: opSetup, Setup: s}); err != nil {
		return w, err
	}
	return w, nil
}

// read hands the worker's events on until its stdout closes.
func (w *workerProc) read(stdout io.Reader, onApplied func(int, time.Time, []*spokev1.Resource, []string), logPath string) {
	dec := gob.NewDecoder(bufio.NewReaderSize(stdout, 1<<16))
	var err error
	for {
		var ev event
		if err = dec.Decode(&ev); err != nil {
			break
		}
		switch ev.Kind {
		case evApplied:
			if onApplied != nil {
				rs := make([]*spokev1.Resource, len(ev.Applied))
				for k, it := range ev.Applied {
					rs[k] = &spokev1.Resource{Name: it.Name, Version: it.Version}
				}
				onApplied(ev.Node, time.Unix(0, ev.At), rs, ev.Removed)
			}
		case evAnswer:
			w.mu.Lock()
			ch := w.pending[ev.ID]
			delete(w.pending, ev.ID)
			w.mu.Unlock()
			if ch != nil {
				ch <- ev
			}
		}
	}
	if errors.Is(err, io.EOF) {
		err = fmt.Errorf("fleet worker %d exited (its log: %s)", w.index, logPath)
	} else {
		err = fmt.Errorf("reading fleet worker %d's events (its log: %s): %w", w.index, logPath, err)
	}
	w.mu.Lock()
	w.err = err
	for id, ch := range w.pending {
		close(ch)
		delete(w.pending, id)
	}
	w.mu.Unlock()
}

func (w *workerProc) send(c command) error {
	w.mu.Lock()
	err := w.err
	w.mu.Unlock()
	if err != nil {
		return err
	}
	w.sendMu.Lock()
	defer w.sendMu.Unlock()
	if err := w.enc.Encode(&c); err != nil {
		return fmt.Errorf("sending fleet worker %d a command: %w", w.index, err)
	}
	if err := w.buf.Flush(); err != nil {
		return fmt.Errorf("sending fleet worker %d a command: %w", w.index, err)
	}
	return nil
}

// ask sends a command and waits for its answer.
func (w *workerProc) ask(ctx context.Context, c command) (event, error) {
	ch := make(chan event, 1)
	w.mu.Lock()
	if w.err != nil {
		err := w.err
		w.mu.Unlock()
		return event{}, err
	}
	w.pending[c.ID] = ch
	w.mu.Unlock()
	if err := w.send(c); err != nil {
		return event{}, err
	}
	select {
	case ev, ok := <-ch:
		if !ok {
			w.mu.Lock()
			defer w.mu.Unlock()
			return event{}, w.err
		}
		return ev, nil
	case <-ctx.Done():
		w.mu.Lock()
		delete(w.pending, c.ID)
		w.mu.Unlock()
		return event{}, ctx.Err()
	}
}

// Len returns the number of nodes.
func (f *Fleet) Len() int { return len(f.opts.Names) }

// Start starts node i: its worker connects it and streams its view. It
// returns at once, with a zero duration: a light agent has no state to
// restore.
func (f *Fleet) Start(i int) (time.Duration, error) {
	return 0, f.workerOf(i).send(command{Op: opStart, Node: i})
}

// Stop stops node i and closes its connection.
func (f *Fleet) Stop(i int) {
	f.workerOf(i).send(command{Op: opStop, Node: i})
}

// RxBytes returns the bytes every node has read from the control plane:
// gRPC on the wire, with HTTP/2 framing and TLS records. It is 0 when a
// worker does not answer within 10 s.
func (f *Fleet) RxBytes() uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var total uint64
	for _, w := range f.workers {
		ev, err := w.ask(ctx, command{Op: opRx, ID: f.nextID.Add(1)})
		if err != nil {
			return 0
		}
		total += ev.Rx
	}
	return total
}

// State is what a node holds.
type State struct {
	// Held maps each resource held to the hash of its content, hex-encoded
	// as versions are.
	Held        map[string]string
	Acks, Nacks uint64
	LastNack    string
}

// State returns what node i holds, or ErrNotRunning.
func (f *Fleet) State(ctx context.Context, i int) (State, error) {
	ev, err := f.workerOf(i).ask(ctx, command{Op: opState, Node: i, ID: f.nextID.Add(1)})
	if err != nil {
		return State{}, err
	}
	if ev.Err != "" {
		if ev.Err == ErrNotRunning.Error() {
			return State{}, ErrNotRunning
		}
		return State{}, errors.New(ev.Err)
	}
	st := State{Held: make(map[string]string, len(ev.Held)), Acks: ev.Acks, Nacks: ev.Nacks, LastNack: ev.LastNack}
	for _, it := range ev.Held {
		st.Held[it.Name] = it.Version
	}
	return st, nil
}

// Err returns why a worker stopped, or nil while every one runs.
func (f *Fleet) Err() error {
	for _, w := range f.workers {
		w.mu.Lock()
		err := w.err
		w.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// StopAll stops every node and every worker.
func (f *Fleet) StopAll() { f.Close() }

// Close stops the workers: each stops its nodes when its stdin closes; one
// that has not exited within 10 s is killed.
func (f *Fleet) Close() {
	for _, w := range f.workers {
		w.sendMu.Lock()
		w.stdin.Close()
		w.sendMu.Unlock()
	}
	for _, w := range f.workers {
		select {
		case <-w.exited:
		case <-time.After(10 * time.Second):
			w.cmd.Process.Kill()
			<-w.exited
		}
	}
	f.workers = nil
}
