package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// relay forwards TCP connections to an address and can cut them off as a
// partition does: Blackhole stops reading and writing on every connection,
// open and new, and closes none; Heal lets what waited through, as TCP's
// retransmissions would once the network is back.
//
// A relay rather than an nftables rule dropping packets: the agent and
// the control plane run in the host's network namespace (only the agent's
// datapath is in the lab's), beside other scenarios' and other tests'
// control planes on loopback, so a rule there would have to pick one
// connection's port pair as it reconnects; the relay cuts exactly the
// connections of the one agent that dials it. What the agent sees is the
// same: its bytes are taken by the kernel and nothing comes back, no RST,
// no FIN, so only its keepalive can tell.
type relay struct {
	t    *testing.T
	lis  net.Listener
	to   string
	done chan struct{}

	mu    sync.Mutex
	open  chan struct{} // closed while forwarding
	conns []net.Conn
	wg    sync.WaitGroup
}

func newRelay(t *testing.T, to string) *relay {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{t: t, lis: lis, to: to, done: make(chan struct{}), open: make(chan struct{})}
	close(r.open)
	r.wg.Go(r.accept)
	t.Cleanup(func() {
		close(r.done)
		lis.Close()
		r.mu.Lock()
		for _, c := range r.conns {
			c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

func (r *relay) addr() string { return r.lis.Addr().String() }

// Blackhole cuts the relay's connections off without closing them.
func (r *relay) Blackhole() {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.open:
		r.open = make(chan struct{})
	default:
	}
}

// Heal lets the connections flow again.
func (r *relay) Heal() {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.open:
	default:
		close(r.open)
	}
}

// wait returns once the relay forwards, false when it is closing.
func (r *relay) wait() bool {
	r.mu.Lock()
	open := r.open
	r.mu.Unlock()
	select {
	case <-open:
		return true
	case <-r.done:
		return false
	}
}

func (r *relay) accept() {
	for {
		in, err := r.lis.Accept()
		if err != nil {
			return
		}
		// The connection to the far side is made at once, as the
		// client's SYN would have been answered before the cut; only
		// bytes are held.
		out, err := net.Dial("tcp", r.to)
		if err != nil {
			in.Close()
			continue
		}
		r.mu.Lock()
		r.conns = append(r.conns, in, out)
		r.mu.Unlock()
		r.wg.Go(func() { r.pipe(out, in) })
		r.wg.Go(func() { r.pipe(in, out) })
	}
}

// pipe copies src to dst while the relay forwards; it neither reads nor
// writes while it is blackholed.
func (r *relay) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		if !r.wait() {
			return
		}
		n, err := src.Read(buf)
		if n > 0 {
			if !r.wait() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				src.Close()
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				dst.(*net.TCPConn).CloseWrite()
			} else {
				dst.Close()
			}
			return
		}
	}
}

// The agent's keepalive in scenario 3: the shortest Time the control plane
// permits, and a short Timeout. A partition must be noticed within their
// sum.
const (
	partitionKeepaliveTime    = 10 * time.Second
	partitionKeepaliveTimeout = 2 * time.Second
)

// TestScenario3Partition: the agent (the real binary, eBPF datapath in
// network namespaces) reaches the control plane through a relay that is
// cut off: packets go nowhere, no connection is closed. The agent notices
// by its keepalive within -keepalive-time plus -keepalive-timeout (its
// spoke_agent_stream_failures_total counts the lost stream, and
// spoke_agent_connected falls to 0); its datapath keeps forwarding a
// long-lived connection and new ones, and keeps the view it had; services
// that change, go and come in the API meanwhile reach it within 5 s of the
// partition healing, when it holds its view again.
func TestScenario3Partition(t *testing.T) {
	n := newEBPFNode(t, "10.244.3.5", "10.244.3.6")
	partitions, length := pick(1, 3), pick(20*time.Second, 90*time.Second)
	ctx, cancel := context.WithTimeout(t.Context(), time.Duration(partitions)*(length+time.Minute)+3*time.Minute)
	defer cancel()
	api := startAPI(t)
	const nodeName = "s3-node-1"
	api.addNode(ctx, t, nodeName, node1.String())
	api.create(ctx, t, service("web", "10.96.33.10", 0), slice("web", "10.244.3.5", "10.244.3.6"))
	api.create(ctx, t, service("changes", "", 0), slice("changes", "10.244.13.1"))
	cp := newControlPlane(t, "controlplane", api.kubeconfig)
	cp.startReady(ctx)
	link := newRelay(t, cp.grpcAddr)
	ag := newAgent(t, nodeName, link.addr(), append(n.args, "-repair-interval", "500ms",
		"-keepalive-time", partitionKeepaliveTime.String(), "-keepalive-timeout", partitionKeepaliveTimeout.String())...)
	ag.start()
	eventually(ctx, t, "the agent holds its view", func() error { return converged(ctx, cp, ag) })
	f, web := n.holdFromPod(ctx, "10.96.33.10")
	f.check(ctx, "before the partition", web)

	bound := partitionKeepaliveTime + partitionKeepaliveTimeout
	var slowestNotice, slowestHeal time.Duration
	for p := range partitions {
		failures := func() float64 {
			v, err := ag.metric("spoke_agent_stream_failures_total", "")
			if err != nil {
				t.Fatalf("the agent's metrics: %v", err)
			}
			return v
		}
		before := failures()
		held, err := ag.state(ctx)
		if err != nil {
			t.Fatal(err)
		}
		link.Blackhole()
		cut := time.Now()
		// The API changes at once: the control plane's new view for the
		// node waits on the far side of the partition.
		api.setEndpoints(ctx, t, "changes", fmt.Sprintf("10.244.13.%d", p+2))
		gone, comes := fmt.Sprintf("comes-%d", p-1), fmt.Sprintf("comes-%d", p)
		if p > 0 {
			if err := api.client.CoreV1().Services(api.ns).Delete(ctx, gone, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		api.create(ctx, t, service(comes, "", 0), slice(comes, fmt.Sprintf("10.244.14.%d", p+1)))

		// Noticed by keepalive, within its bound, while the datapath
		// forwards. The bound is checked with a second's slack: the
		// metrics are polled between connection checks.
		var noticed time.Duration
		for noticed == 0 {
			f.check(ctx, fmt.Sprintf("partition %d, before the agent noticed", p+1), web)
			connected, err := ag.metric("spoke_agent_connected", "")
			if err != nil {
				t.Fatalf("the agent's metrics: %v", err)
			}
			if failures() > before && connected == 0 {
				noticed = time.Since(cut)
				break
			}
			if time.Since(cut) > bound+5*time.Second || t.Failed() {
				t.Fatalf("partition %d: the agent did not notice in %v (keepalive bound %v)", p+1, time.Since(cut).Round(time.Millisecond), bound)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if noticed > bound+time.Second {
			t.Errorf("partition %d: the agent noticed %v after the cut, want within -keepalive-time + -keepalive-timeout = %v",
				p+1, noticed.Round(time.Millisecond), bound)
		}
		slowestNotice = max(slowestNotice, noticed)
		if lines := ag.logLines("control-plane stream ended; reconnecting"); len(lines) == 0 {
			t.Errorf("partition %d: the agent logged no reconnect", p+1)
		}
		f.checkFor(ctx, time.Until(cut.Add(length)), fmt.Sprintf("partition %d, noticed", p+1), web)
		// The datapath and the cache hold what they had.
		st, err := ag.state(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.GetConnected() {
			t.Errorf("partition %d: the agent says it is connected", p+1)
		}
		if got, want := versions(st.GetCached()), versions(held.GetCached()); !maps.Equal(got, want) {
			t.Errorf("partition %d: the agent's cache changed while cut off: %s", p+1, diff(got, want))
		}
		if got, want := st.GetProgrammedServices(), held.GetProgrammedServices(); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("partition %d: the datapath programs %v, had %v", p+1, head(got), head(want))
		}

		link.Heal()
		healed := time.Now()
		if err := within(ctx, convergeBound, func() error {
			if err := converged(ctx, cp, ag); err != nil {
				return err
			}
			view, err := cp.view(ctx, nodeName)
			if err != nil {
				return err
			}
			if view[api.key(comes)] == "" || (p > 0 && view[api.key(gone)] != "") {
				return fmt.Errorf("the control plane's view lacks the partition's changes")
			}
			return nil
		}); err != nil {
			t.Fatalf("partition %d: %v after healing: %v", p+1, convergeBound, err)
		}
		took := time.Since(healed)
		slowestHeal = max(slowestHeal, took)
		f.check(ctx, fmt.Sprintf("partition %d, healed", p+1), web)
		t.Logf("partition %d: noticed %v after the cut; held its view %v after healing", p+1, noticed.Round(time.Millisecond), took.Round(time.Millisecond))
		if t.Failed() {
			return
		}
	}
	t.Logf("%d partitions of %v, keepalive %v+%v: noticed at most %v after the cut, the view held at most %v after healing; %d connection checks, %d failed",
		partitions, length, partitionKeepaliveTime, partitionKeepaliveTimeout, slowestNotice.Round(time.Millisecond), slowestHeal.Round(time.Millisecond), f.checks, f.failures)
}
