package testnet

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/internal/netns"
)

// Outcome is what became of a packet.
type Outcome uint8

// Outcomes of a probe.
const (
	// Reached: a responder answered.
	Reached Outcome = iota + 1
	// Refused: the connection was refused (ECONNREFUSED, from the local
	// kernel or an ICMP port unreachable).
	Refused
	// Unreachable: the local kernel refused to send (EHOSTUNREACH,
	// ENETUNREACH, EPERM).
	Unreachable
	// TimedOut: nothing came back.
	TimedOut
)

func (o Outcome) String() string { return datapath.Name(o, "Outcome", outcomeNames[:]) }

var outcomeNames = [...]string{Reached: "reached", Refused: "refused", Unreachable: "unreachable", TimedOut: "timed out"}

// Result is what a probe saw.
type Result struct {
	Outcome Outcome
	// Responder, Local and Peer are what the responder reported: its
	// kind, the address it was reached on, and the source it saw.
	Responder string
	Local     netip.AddrPort
	Peer      netip.AddrPort
	// Remote is the peer as the client saw it: getpeername for TCP, the
	// reply's source for UDP.
	Remote netip.AddrPort
	// Detail is the error that decided Refused, Unreachable or TimedOut.
	Detail string
	// Elapsed is the time a repeated probe took (see Lab.Repeat).
	Elapsed time.Duration
	// Conn names a connection Lab.Open holds.
	Conn int
}

func (r Result) String() string {
	if r.Outcome == Reached {
		return fmt.Sprintf("reached %s %s (it saw %s; the client saw %s)", r.Responder, r.Local, r.Peer, r.Remote)
	}
	return fmt.Sprintf("%s (%s)", r.Outcome, r.Detail)
}

// request is one probe, run in this process or the helper.
type request struct {
	NS      string
	Proto   datapath.Protocol
	Src     netip.AddrPort
	Dst     netip.AddrPort
	Timeout time.Duration
	// Repeat > 0 connects that many times (TCP) and reports the time.
	Repeat int
	// Op is what to do: probe (""), or open, echo or close a held
	// connection.
	Op string
	// Conn names the held connection of echo and close.
	Conn int
}

type response struct {
	Result Result
	Err    string
}

func (r request) network() string {
	n := "tcp"
	if r.Proto == datapath.UDP {
		n = "udp"
	}
	if r.Dst.Addr().Is4() {
		return n + "4"
	}
	return n + "6"
}

// prober runs requests and holds the connections they open.
type prober struct {
	conns map[int]*net.TCPConn
	next  int
}

func newProber() *prober { return &prober{conns: map[int]*net.TCPConn{}} }

func (p *prober) do(req request) (Result, error) {
	switch req.Op {
	case "":
		return probe(req)
	case "open":
		if req.Proto != datapath.TCP {
			return Result{}, fmt.Errorf("the lab holds TCP connections only, not %s", req.Proto)
		}
		tc, res, err := dialTCP(req)
		if tc != nil {
			p.next++
			p.conns[p.next] = tc
			res.Conn = p.next
		}
		return res, err
	case "echo":
		tc, ok := p.conns[req.Conn]
		if !ok {
			return Result{}, fmt.Errorf("no held connection %d", req.Conn)
		}
		return Result{Outcome: Reached, Conn: req.Conn}, echo(tc, req.Timeout)
	case "close":
		tc, ok := p.conns[req.Conn]
		if !ok {
			return Result{}, fmt.Errorf("no held connection %d", req.Conn)
		}
		delete(p.conns, req.Conn)
		return Result{}, tc.Close()
	}
	return Result{}, fmt.Errorf("unknown operation %q", req.Op)
}

func (p *prober) close() {
	for id, tc := range p.conns {
		tc.Close()
		delete(p.conns, id)
	}
}

// echo sends a line on a held connection and reads it back.
func echo(tc *net.TCPConn, timeout time.Duration) error {
	tc.SetDeadline(time.Now().Add(timeout))
	defer tc.SetDeadline(time.Time{})
	const line = "ping\n"
	if _, err := io.WriteString(tc, line); err != nil {
		return fmt.Errorf("echo on %s: %w", tc.RemoteAddr(), err)
	}
	buf := make([]byte, len(line))
	if _, err := io.ReadFull(tc, buf); err != nil {
		return fmt.Errorf("echo on %s: %w", tc.RemoteAddr(), err)
	}
	if string(buf) != line {
		return fmt.Errorf("echo on %s: got %q back", tc.RemoteAddr(), buf)
	}
	return nil
}

// probe sends one packet and waits for the answer.
func probe(req request) (Result, error) {
	switch req.Proto {
	case datapath.TCP:
		if req.Repeat > 0 {
			return repeatTCP(req)
		}
		return probeTCP(req)
	case datapath.SCTP:
		// The same as TCP's, over an SCTP association.
		return probeTCP(req)
	case datapath.UDP:
		return probeUDP(req)
	}
	return Result{}, fmt.Errorf("the lab cannot send %s", req.Proto)
}

func control(network string, recverr bool) func(string, string, syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			if serr == nil && recverr {
				if strings.HasSuffix(network, "4") {
					serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVERR, 1)
				} else {
					serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVERR, 1)
				}
			}
		})
		return errors.Join(err, serr)
	}
}

// classify turns a socket error into an outcome, or returns it.
func classify(err error) (Result, error) {
	var ne net.Error
	switch {
	case errors.Is(err, unix.ECONNREFUSED):
		return Result{Outcome: Refused, Detail: err.Error()}, nil
	case errors.Is(err, unix.EHOSTUNREACH), errors.Is(err, unix.ENETUNREACH), errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return Result{Outcome: Unreachable, Detail: err.Error()}, nil
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, unix.ETIMEDOUT), errors.As(err, &ne) && ne.Timeout():
		return Result{Outcome: TimedOut, Detail: err.Error()}, nil
	}
	return Result{}, err
}

func probeTCP(req request) (Result, error) {
	tc, res, err := dialTCP(req)
	if tc != nil {
		// Reset instead of lingering in TIME_WAIT, so the same source port
		// can be used again at once.
		tc.SetLinger(0)
		tc.Close()
	}
	return res, err
}

// dialTCP connects and reads the responder's greeting. The connection is
// nil unless the greeting came.
func dialTCP(req request) (*net.TCPConn, Result, error) {
	d := net.Dialer{Timeout: req.Timeout, Control: control(req.network(), false)}
	if req.Src.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(req.Src)
	}
	var conn net.Conn
	err := netns.Do(req.NS, func() error {
		var err error
		if req.Proto == datapath.SCTP {
			conn, err = dialSCTP(req.Src, req.Dst, req.Timeout)
			return err
		}
		conn, err = d.Dial(req.network(), req.Dst.String())
		return err
	})
	if err != nil {
		res, err := classify(err)
		return nil, res, err
	}
	tc := conn.(*net.TCPConn)
	tc.SetDeadline(time.Now().Add(req.Timeout))
	line, err := bufio.NewReader(tc).ReadString('\n')
	if err != nil {
		tc.SetLinger(0)
		tc.Close()
		res, err := classify(fmt.Errorf("reading the answer: %w", err))
		return nil, res, err
	}
	res, err := parseAnswer(line)
	if err != nil {
		tc.Close()
		return nil, res, err
	}
	res.Remote = addrPortOf(tc.RemoteAddr())
	tc.SetDeadline(time.Time{})
	return tc, res, nil
}

// udpRetransmit is how long a UDP probe waits before it sends again.
const udpRetransmit = 250 * time.Millisecond

func probeUDP(req request) (Result, error) {
	lc := net.ListenConfig{Control: control(req.network(), true)}
	src := ":0"
	if req.Src.IsValid() {
		src = req.Src.String()
	}
	var pc net.PacketConn
	err := netns.Do(req.NS, func() error {
		var err error
		pc, err = lc.ListenPacket(context.Background(), req.network(), src)
		return err
	})
	if err != nil {
		return Result{}, err
	}
	uc := pc.(*net.UDPConn)
	defer uc.Close()
	// UDP is unreliable, and so are the first packets through a lab whose
	// neighbors are still being resolved: like a DNS client, the probe
	// sends again until an answer comes or its time is up.
	deadline := time.Now().Add(req.Timeout)
	buf := make([]byte, 512)
	var n int
	var from netip.AddrPort
	for {
		if _, err := uc.WriteToUDPAddrPort([]byte("probe\n"), req.Dst); err != nil {
			return classify(err)
		}
		next := time.Now().Add(udpRetransmit)
		if next.After(deadline) {
			next = deadline
		}
		uc.SetReadDeadline(next)
		n, from, err = uc.ReadFromUDPAddrPort(buf)
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) || !time.Now().Before(deadline) {
			return classify(err)
		}
	}
	res, err := parseAnswer(string(buf[:n]))
	if err != nil {
		return res, err
	}
	res.Remote = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	return res, nil
}

// repeatTCP connects and closes req.Repeat times and reports the time.
func repeatTCP(req request) (Result, error) {
	var res Result
	err := netns.Do(req.NS, func() error {
		start := time.Now()
		for range req.Repeat {
			if err := connectOnce(req); err != nil {
				return err
			}
		}
		res = Result{Outcome: Reached, Elapsed: time.Since(start)}
		return nil
	})
	return res, err
}

// connectOnce makes one TCP connection with plain system calls (the
// benchmark measures the kernel, not the Go runtime's poller) and resets
// it.
func connectOnce(req request) error {
	domain := unix.AF_INET
	if req.Dst.Addr().Is6() {
		domain = unix.AF_INET6
	}
	fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1}); err != nil {
		return err
	}
	if err := unix.Connect(fd, sockaddr(req.Dst)); err != nil {
		return fmt.Errorf("connecting to %s: %w", req.Dst, err)
	}
	return nil
}

func sockaddr(a netip.AddrPort) unix.Sockaddr {
	if a.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())}
	}
	return &unix.SockaddrInet6{Addr: a.Addr().As16(), Port: int(a.Port())}
}

func addrPortOf(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// AnswerLine is what a responder answers, on TCP at once and on UDP to
// every datagram: its name, the address it was reached on and the source
// it saw, "<name> <local> <peer>\n". The responders of hack/local answer
// the same way.
func AnswerLine(name string, local, peer fmt.Stringer) string {
	return fmt.Sprintf("%s %s %s\n", name, local, peer)
}

// ParseAnswer reads an AnswerLine.
func ParseAnswer(s string) (name string, local, peer netip.AddrPort, err error) {
	f := strings.Fields(s)
	if len(f) != 3 {
		return "", local, peer, fmt.Errorf("bad answer %q", s)
	}
	local, err1 := netip.ParseAddrPort(f[1])
	peer, err2 := netip.ParseAddrPort(f[2])
	if err := errors.Join(err1, err2); err != nil {
		return "", local, peer, fmt.Errorf("bad answer %q: %w", s, err)
	}
	return f[0], local, peer, nil
}

func parseAnswer(s string) (Result, error) {
	name, local, peer, err := ParseAnswer(s)
	if err != nil {
		return Result{}, err
	}
	return Result{Outcome: Reached, Responder: name, Local: local, Peer: peer}, nil
}

type responderKey struct {
	addr  netip.AddrPort
	proto datapath.Protocol
}

// responder answers on one address and port.
type responder struct {
	tcp net.Listener
	udp *net.UDPConn

	mu    sync.Mutex
	conns map[net.Conn]bool // accepted and open
}

// respond makes sure something answers proto on addr in ns.
func (l *Lab) respond(ns *netns.NS, kind string, addr netip.AddrPort, proto datapath.Protocol) (*responder, error) {
	key := responderKey{addr, proto}
	if r, ok := l.responders[key]; ok {
		return r, nil
	}
	r := &responder{conns: map[net.Conn]bool{}}
	network := "tcp4"
	if addr.Addr().Is6() {
		network = "tcp6"
	}
	err := ns.Do(func() error {
		var err error
		switch proto {
		case datapath.TCP:
			r.tcp, err = net.Listen(network, addr.String())
		case datapath.UDP:
			r.udp, err = net.ListenUDP("udp"+network[3:], net.UDPAddrFromAddrPort(addr))
		case datapath.SCTP:
			r.tcp, err = listenSCTP(addr)
		default:
			err = fmt.Errorf("the lab cannot answer %s", proto)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("responder on %s %s: %w", proto, addr, err)
	}
	if r.tcp != nil {
		go func() {
			for {
				c, err := r.tcp.Accept()
				if err != nil {
					return
				}
				// Greet, then echo: a probe reads the greeting and
				// resets; a held connection (Lab.Open) goes on. close
				// ends the connections still open, so that none
				// outlives its case.
				r.mu.Lock()
				r.conns[c] = true
				r.mu.Unlock()
				go func() {
					defer func() {
						r.mu.Lock()
						delete(r.conns, c)
						r.mu.Unlock()
						c.Close()
					}()
					io.WriteString(c, AnswerLine(kind, addrPortOf(c.LocalAddr()), addrPortOf(c.RemoteAddr())))
					io.Copy(c, c)
				}()
			}
		}()
	}
	if r.udp != nil {
		go func() {
			buf := make([]byte, 512)
			for {
				_, from, err := r.udp.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
				r.udp.WriteToUDPAddrPort([]byte(AnswerLine(kind, addr, from)), from)
			}
		}()
	}
	l.responders[key] = r
	return r, nil
}

func (r *responder) close() {
	if r.tcp != nil {
		r.tcp.Close()
	}
	r.mu.Lock()
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	if r.udp != nil {
		r.udp.Close()
	}
}
