// Package countproxy forwards TCP connections to an upstream address and
// counts the bytes that pass through in each direction: what is on the
// wire, TLS records and HTTP/2 framing included.
package countproxy

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy accepts connections on its listener (which may be inside another
// network namespace) and forwards each to the upstream address, dialled
// from this process's namespace.
type Proxy struct {
	// Down counts the bytes the upstream sent to the clients.
	Down atomic.Uint64
	// Up counts the bytes the clients sent to the upstream.
	Up atomic.Uint64

	lis         net.Listener
	upstream    string
	dialTimeout time.Duration
	wg          sync.WaitGroup
	mu          sync.Mutex
	conns       map[net.Conn]struct{} // nil once closed
}

// New starts forwarding the connections lis accepts to upstream (a
// host:port). A zero dialTimeout dials with no timeout.
func New(lis net.Listener, upstream string, dialTimeout time.Duration) *Proxy {
	p := &Proxy{lis: lis, upstream: upstream, dialTimeout: dialTimeout, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.serve)
	return p
}

// Addr is the listener's host:port.
func (p *Proxy) Addr() string { return p.lis.Addr().String() }

// Close stops accepting, ends every forwarded connection and waits for
// their goroutines.
func (p *Proxy) Close() {
	p.lis.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) serve() {
	for {
		c, err := p.lis.Accept()
		if err != nil {
			return
		}
		p.wg.Go(func() { p.forward(c) })
	}
}

// forward copies both ways between client and upstream until either side
// ends, then closes both.
func (p *Proxy) forward(client net.Conn) {
	server, err := net.DialTimeout("tcp", p.upstream, p.dialTimeout)
	if err != nil {
		client.Close()
		return
	}
	if !p.track(client, server) {
		return
	}
	var wg sync.WaitGroup
	pipe := func(dst, src net.Conn, n *atomic.Uint64) {
		io.Copy(countingWriter{w: dst, n: n}, src)
		dst.Close()
		src.Close()
	}
	wg.Go(func() { pipe(client, server, &p.Down) })
	wg.Go(func() { pipe(server, client, &p.Up) })
	wg.Wait()
	p.mu.Lock()
	delete(p.conns, client)
	delete(p.conns, server)
	p.mu.Unlock()
}

// track records conns so Close can end them, or closes them if the proxy
// is already closed.
func (p *Proxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		for _, c := range conns {
			c.Close()
		}
		return false
	}
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
	return true
}

type countingWriter struct {
	w io.Writer
	n *atomic.Uint64
}

func (w countingWriter) Write(b []byte) (int, error) {
	n, err := w.w.Write(b)
	w.n.Add(uint64(n))
	return n, err
}
