package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/spoke-proxy/spoke/internal/testnet"
)

// The demo's pods are this program started again, in a pod's network
// namespace and its node's cgroup, with one of these subcommands:
//
//	pod-serve -name NAME -tcp ADDR -udp ADDR
//	pod-probe -proto tcp|udp -dst ADDR [-timeout D]
//
// A server answers who it is, the address it was reached on and the peer it
// saw: over HTTP on TCP (so curl works on it), in one datagram on UDP. A
// probe prints what answered as one JSON line.
const (
	serveCommand = "pod-serve"
	probeCommand = "pod-probe"
)

func podMain(args []string) error {
	switch args[0] {
	case serveCommand:
		fs := flag.NewFlagSet(serveCommand, flag.ContinueOnError)
		name := fs.String("name", "", "name the pod answers with")
		tcp := fs.String("tcp", ":8080", "TCP (HTTP) address")
		udp := fs.String("udp", ":5353", "UDP address")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return serve(*name, *tcp, *udp)
	case probeCommand:
		fs := flag.NewFlagSet(probeCommand, flag.ContinueOnError)
		proto := fs.String("proto", "tcp", "tcp or udp")
		dst := fs.String("dst", "", "address and port")
		timeout := fs.Duration("timeout", 2*time.Second, "how long to wait for an answer")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		ap, err := netip.ParseAddrPort(*dst)
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(probe(*proto, ap, *timeout))
	}
	return fmt.Errorf("unknown subcommand %q", args[0])
}

func serve(name, tcpAddr, udpAddr string) error {
	lis, err := net.Listen("tcp", tcpAddr)
	if err != nil {
		return err
	}
	uc, err := net.ListenPacket("udp", udpAddr)
	if err != nil {
		return err
	}
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := uc.ReadFrom(buf)
			if err != nil {
				return
			}
			uc.WriteTo([]byte(testnet.AnswerLine(name, uc.LocalAddr(), from)), from)
		}
	}()
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		local := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		io.WriteString(w, testnet.AnswerLine(name, local, stringer(r.RemoteAddr)))
	})}
	return srv.Serve(lis)
}

type stringer string

func (s stringer) String() string { return string(s) }

// answer is what a probe saw.
type answer struct {
	// Responder, Local and Peer are what the server reported: its name,
	// the address it was reached on and the source it saw.
	Responder string `json:"responder,omitempty"`
	Local     string `json:"local,omitempty"`
	Peer      string `json:"peer,omitempty"`
	// Remote is the server as the client saw it (getpeername for TCP, the
	// reply's source for UDP): the service address when translation back
	// works.
	Remote string `json:"remote,omitempty"`
	// Err says why nothing answered.
	Err string `json:"err,omitempty"`
}

func probe(proto string, dst netip.AddrPort, timeout time.Duration) answer {
	var a answer
	var err error
	switch proto {
	case "tcp":
		a, err = probeTCP(dst, timeout)
	case "udp":
		a, err = probeUDP(dst, timeout)
	default:
		err = fmt.Errorf("unknown protocol %q", proto)
	}
	if err != nil {
		a.Err = err.Error()
	}
	return a
}

func probeTCP(dst netip.AddrPort, timeout time.Duration) (answer, error) {
	conn, err := net.DialTimeout("tcp", dst.String(), timeout)
	if err != nil {
		return answer{}, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(conn, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", dst); err != nil {
		return answer{}, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, err
	}
	a, err := parseAnswer(string(body))
	a.Remote = conn.RemoteAddr().String()
	return a, err
}

func probeUDP(dst netip.AddrPort, timeout time.Duration) (answer, error) {
	uc, err := net.ListenUDP("udp", nil)
	if err != nil {
		return answer{}, err
	}
	defer uc.Close()
	// Sent again every 250ms until an answer comes, as a DNS client does.
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 512)
	for {
		if _, err := uc.WriteToUDPAddrPort([]byte("probe\n"), dst); err != nil {
			return answer{}, err
		}
		next := time.Now().Add(250 * time.Millisecond)
		if next.After(deadline) {
			next = deadline
		}
		uc.SetReadDeadline(next)
		n, from, err := uc.ReadFromUDPAddrPort(buf)
		if err == nil {
			a, err := parseAnswer(string(buf[:n]))
			a.Remote = netip.AddrPortFrom(from.Addr().Unmap(), from.Port()).String()
			return a, err
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) || !time.Now().Before(deadline) {
			return answer{}, err
		}
	}
}

func parseAnswer(s string) (answer, error) {
	name, local, peer, err := testnet.ParseAnswer(s)
	if err != nil {
		return answer{}, err
	}
	return answer{Responder: name, Local: local.String(), Peer: peer.String()}, nil
}

// podCommand returns a command that runs this program's subcommand in the
// pod's network namespace and its node's cgroup.
func podCommand(ctx context.Context, p *pod, args ...string) (*exec.Cmd, func(), error) {
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	cg, err := os.Open(p.node.cgroup)
	if err != nil {
		return nil, nil, err
	}
	// nsenter enters the network namespace only: the pod keeps the host's
	// mounts, cgroup and bpf file systems included.
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + p.ns.Path(), "--", self}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd()), Pdeathsig: syscall.SIGKILL}
	return cmd, func() { cg.Close() }, nil
}

// probeFrom runs a probe in a pod.
func probeFrom(ctx context.Context, p *pod, proto string, dst netip.AddrPort, timeout time.Duration) answer {
	cmd, done, err := podCommand(ctx, p, probeCommand, "-proto", proto, "-dst", dst.String(), "-timeout", timeout.String())
	if err != nil {
		return answer{Err: err.Error()}
	}
	defer done()
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, ee.Stderr)
		}
		return answer{Err: err.Error()}
	}
	var a answer
	if err := json.Unmarshal(out, &a); err != nil {
		return answer{Err: fmt.Sprintf("probe printed %q: %v", out, err)}
	}
	return a
}
