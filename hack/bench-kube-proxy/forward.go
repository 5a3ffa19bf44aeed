package main

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// forwarder accepts TCP connections (on a listener that may be inside a
// node's namespace) and forwards them to an address in this process's
// namespace, counting the bytes sent back to the clients: what the
// upstream (API server, control plane) sent them, TLS and HTTP/2 framing
// included.
type forwarder struct {
	lis      net.Listener
	upstream string
	down     atomic.Uint64
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

func newForwarder(lis net.Listener, upstream string) *forwarder {
	f := &forwarder{lis: lis, upstream: upstream, conns: map[net.Conn]struct{}{}}
	f.wg.Go(f.serve)
	return f
}

// addr is the listener's host:port.
func (f *forwarder) addr() string { return f.lis.Addr().String() }

func (f *forwarder) serve() {
	for {
		c, err := f.lis.Accept()
		if err != nil {
			return
		}
		f.wg.Go(func() { f.forward(c) })
	}
}

func (f *forwarder) forward(c net.Conn) {
	up, err := net.Dial("tcp", f.upstream)
	if err != nil {
		c.Close()
		return
	}
	if !f.track(c, up) {
		return
	}
	done := make(chan struct{})
	go func() {
		io.Copy(up, c)
		up.Close()
		close(done)
	}()
	io.Copy(countingWriter{c, &f.down}, up)
	c.Close()
	<-done
	f.untrack(c, up)
}

func (f *forwarder) track(cs ...net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		f.conns[c] = struct{}{}
	}
	return true
}

func (f *forwarder) untrack(cs ...net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range cs {
		delete(f.conns, c)
	}
}

// close stops accepting and ends every forwarded connection.
func (f *forwarder) close() {
	f.lis.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.conns = nil
	f.mu.Unlock()
	f.wg.Wait()
}

type countingWriter struct {
	w io.Writer
	n *atomic.Uint64
}

func (w countingWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.n.Add(uint64(n))
	return n, err
}
