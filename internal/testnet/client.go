package testnet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"time"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/internal/netns"
)

const helperEnv = "SPOKE_TESTNET_HELPER"

// Main runs a test binary's tests, or, when the binary was started as a
// lab's client helper, serves probes until its input ends. Call it from
// TestMain, with the *testing.M or with what wraps its Run.
func Main(m interface{ Run() int }) {
	if os.Getenv(helperEnv) == "1" {
		if err := serve(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "testnet helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func serve(in io.Reader, out io.Writer) error {
	dec, enc := json.NewDecoder(in), json.NewEncoder(out)
	p := newProber()
	defer p.close()
	for {
		var req request
		if err := dec.Decode(&req); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		var resp response
		var err error
		resp.Result, err = p.do(req)
		if err != nil {
			resp.Err = err.Error()
		}
		if err := enc.Encode(resp); err != nil {
			return err
		}
	}
}

// helper is the client process in the pod cgroup.
type helper struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	enc *json.Encoder
	dec *json.Decoder
}

func startHelper(cgroup string) (*helper, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cg, err := os.Open(cgroup)
	if err != nil {
		return nil, err
	}
	defer cg.Close()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the client helper in cgroup %s: %w", cgroup, err)
	}
	return &helper{cmd: cmd, in: in, enc: json.NewEncoder(in), dec: json.NewDecoder(out)}, nil
}

func (h *helper) probe(req request) (Result, error) {
	if err := h.enc.Encode(req); err != nil {
		return Result{}, fmt.Errorf("client helper: %w", err)
	}
	var resp response
	if err := h.dec.Decode(&resp); err != nil {
		return Result{}, fmt.Errorf("client helper: %w", err)
	}
	if resp.Err != "" {
		return resp.Result, errors.New(resp.Err)
	}
	return resp.Result, nil
}

func (h *helper) close() error {
	h.in.Close()
	return h.cmd.Wait()
}

// Send sends the first packet of a connection (a TCP connect, or a UDP
// datagram) from origin and reports what answered. Whatever pkt.Dst is,
// something listens there unless the datapath sends the packet elsewhere:
// a node address answers from the node, any other unknown address from
// the world beyond the node.
func (l *Lab) Send(ctx context.Context, origin datapath.Origin, pkt datapath.Packet) (Result, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	req, err := l.prepare(origin, pkt)
	if err != nil {
		return Result{}, err
	}
	return l.run(ctx, origin, req)
}

// run runs a request where origin says: packets from outside start in this
// process, packets from the node in the client helper, whose sockets
// belong to the pod cgroup.
func (l *Lab) run(ctx context.Context, origin datapath.Origin, req request) (Result, error) {
	if dl, ok := ctx.Deadline(); ok {
		req.Timeout = min(req.Timeout, max(0, dl.Sub(timeNow())))
	}
	if origin == datapath.FromOutside {
		return l.local.do(req)
	}
	if l.client == nil {
		var err error
		if l.client, err = startHelper(l.podCgroup); err != nil {
			return Result{}, err
		}
	}
	return l.client.probe(req)
}

// Repeat connects n times over TCP from the node to dst and reports the
// time it took in Result.Elapsed.
func (l *Lab) Repeat(ctx context.Context, src netip.Addr, dst netip.AddrPort, n int) (Result, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	req, err := l.prepare(datapath.FromNode, datapath.Packet{Protocol: datapath.TCP, Src: netip.AddrPortFrom(src, 0), Dst: dst})
	if err != nil {
		return Result{}, err
	}
	req.Src = netip.AddrPort{}
	req.Repeat = n
	if l.client == nil {
		if l.client, err = startHelper(l.podCgroup); err != nil {
			return Result{}, err
		}
	}
	return l.client.probe(req)
}

// prepare puts the source where origin says and makes the destination
// answer.
func (l *Lab) prepare(origin datapath.Origin, pkt datapath.Packet) (request, error) {
	req := request{Proto: pkt.Protocol, Src: pkt.Src, Dst: pkt.Dst, Timeout: l.opts.Timeout}
	src, dst := pkt.Src.Addr(), pkt.Dst.Addr()
	if src.IsValid() && src.Is4() != dst.Is4() {
		return req, fmt.Errorf("packet %s mixes address families", pkt)
	}
	switch origin {
	case datapath.FromNode:
		switch b, isBackend := l.backends[src]; {
		case slices.Contains(l.nodeAddrs, src):
			req.NS = l.node.Path()
		case isBackend:
			req.NS = b.ns.Path()
		default:
			req.NS = l.pod.Path()
			if src.IsValid() {
				if err := l.addExtra(l.pod, src, PodDevice, netip.Addr{}); err != nil {
					return req, err
				}
			}
		}
	case datapath.FromOutside:
		req.NS = l.outside.Path()
		if src.IsValid() {
			via := outside4
			if src.Is6() {
				via = outside6
			}
			if err := l.addExtra(l.outside, src, ExternalDevice, via); err != nil {
				return req, err
			}
		}
	default:
		return req, fmt.Errorf("unknown origin %d", origin)
	}

	var owner *netns.NS
	kind := "world"
	switch b, isBackend := l.backends[dst]; {
	case slices.Contains(l.nodeAddrs, dst):
		owner, kind = l.node, "node"
	case isBackend:
		owner, kind = b.ns, "backend"
	default:
		owner = l.world
		if err := l.addExtra(l.world, dst, "", netip.Addr{}); err != nil {
			return req, err
		}
	}
	if _, err := l.respond(owner, kind, pkt.Dst, pkt.Protocol); err != nil {
		return req, err
	}
	return req, nil
}

var timeNow = time.Now
