package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"google.golang.org/grpc"

	"github.com/spoke-proxy/spoke/controlplane/model"
	"github.com/spoke-proxy/spoke/controlplane/server"
	"github.com/spoke-proxy/spoke/controlplane/store"
	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/internal/ebpftest"
	"github.com/spoke-proxy/spoke/internal/loopback"
	"github.com/spoke-proxy/spoke/internal/testnet"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// agentEnv makes the test binary run the agent's main instead of the tests,
// so that a test can start, kill and restart a real agent process.
const agentEnv = "SPOKE_TEST_AGENT_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(agentEnv) == "1" {
		main()
		os.Exit(0)
	}
	testnet.Main(m)
}

// agentProcess is the agent binary started with the given flags.
type agentProcess struct {
	t       *testing.T
	args    []string
	healthz string
	cmd     *exec.Cmd
}

func (p *agentProcess) start() {
	p.t.Helper()
	p.cmd = exec.Command(os.Args[0], append([]string{"-test.run=^$"}, p.args...)...)
	p.cmd.Env = append(os.Environ(), agentEnv+"=1")
	p.cmd.Stderr = os.Stderr
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
}

// kill kills the agent with SIGKILL: it cleans nothing up.
func (p *agentProcess) kill() {
	p.t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		p.t.Fatal(err)
	}
	p.cmd.Wait()
}

func (p *agentProcess) ready() bool {
	resp, err := http.Get("http://" + p.healthz + "/healthz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// serveViews serves st's views on addr ("127.0.0.1:0" for any port)
// until the server is stopped or the test ends, and returns its address.
func serveViews(t *testing.T, st *store.Store, addr string) (*grpc.Server, string) {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(server.ServerOptions()...)
	server.New(server.Options{Store: st}).Register(gs)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return gs, lis.Addr().String()
}

// TestKilledAgentDropsNoFlow kills the agent with SIGKILL and restarts it
// while a long-lived connection from a pod, one from outside, and a stream
// of new connections of both kinds run through a service: not one of them
// may fail, before, while the agent is gone, or while it comes back.
func TestKilledAgentDropsNoFlow(t *testing.T) {
	testnet.RequireRoot(t)
	testnet.Require(t, features.HaveProgramType(ebpf.CGroupSockAddr) == nil, "BPF_PROG_TYPE_CGROUP_SOCK_ADDR")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	lab := testnet.NewForTest(t, testnet.Options{})
	nodeAddr := netip.MustParseAddr("192.168.0.1")
	if err := lab.SetNodeAddrs([]netip.Addr{nodeAddr}); err != nil {
		t.Fatal(err)
	}
	web := &spokev1.Service{Namespace: "default", Name: "web", ClusterIps: []string{"10.96.0.10"},
		Ports: []*spokev1.ServicePort{{Name: "http", Protocol: spokev1.Protocol_PROTOCOL_TCP, Port: 80, NodePort: 30080,
			Internal: &spokev1.Backends{NoEndpoints: spokev1.NoEndpoints_NO_ENDPOINTS_REJECT}}}}
	backends := map[netip.AddrPort]bool{}
	for _, a := range []string{"10.244.1.5", "10.244.1.6"} {
		be := netip.AddrPortFrom(netip.MustParseAddr(a), 8080)
		backends[be] = true
		if err := lab.AddBackend(be, datapath.TCP, false); err != nil {
			t.Fatal(err)
		}
		web.Ports[0].Internal.Endpoints = append(web.Ports[0].Internal.Endpoints, &spokev1.Endpoint{Ip: a, Port: 8080})
	}

	// The control plane, in this process.
	st := store.New()
	if _, err := st.Apply(store.Batch{
		Nodes:    map[string]*spokev1.Node{"node-1": {Name: "node-1", Addresses: []string{nodeAddr.String()}}},
		Services: map[string]*model.Views{"default/web": {Default: web}},
	}); err != nil {
		t.Fatal(err)
	}
	st.MarkReady()
	_, cpAddr := serveViews(t, st, "127.0.0.1:0")

	_, ebpfArgs := ebpftest.AgentDatapath(t, lab)
	agent := &agentProcess{t: t, healthz: loopback.FreeAddr(t)}
	agent.args = append(ebpfArgs,
		"-node-name", "node-1", "-controlplane", cpAddr, "-insecure",
		"-state-file", filepath.Join(t.TempDir(), "state.db"),
		"-healthz-address", agent.healthz, "-metrics-address", loopback.FreeAddr(t), "-inspect-address", loopback.FreeAddr(t),
	)
	agent.start()
	defer func() { agent.kill() }()

	// A pod's connections to the cluster IP take the socket-level path,
	// connections from outside to the node port the tc path.
	fromPod := flow{datapath.FromNode, datapath.Packet{Protocol: datapath.TCP,
		Src: netip.MustParseAddrPort("10.244.1.100:0"), Dst: netip.MustParseAddrPort("10.96.0.10:80")}}
	fromOutside := flow{datapath.FromOutside, datapath.Packet{Protocol: datapath.TCP,
		Src: netip.MustParseAddrPort("203.0.113.50:0"), Dst: netip.AddrPortFrom(nodeAddr, 30080)}}
	reached := func(pkt datapath.Packet, res testnet.Result) error {
		if res.Outcome != testnet.Reached || !backends[res.Local] || res.Remote != pkt.Dst {
			return fmt.Errorf("%s: %s", pkt, res)
		}
		return nil
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := lab.Send(ctx, fromPod.origin, fromPod.pkt)
		if err == nil && reached(fromPod.pkt, res) == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not program the service: %v %v", res, err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	var held []*testnet.Conn
	for _, f := range []flow{fromPod, fromOutside} {
		c, res, err := lab.Open(ctx, f.origin, f.pkt)
		if err == nil {
			err = reached(f.pkt, res)
		}
		if err != nil {
			t.Fatalf("opening a long-lived connection: %v", err)
		}
		held = append(held, c)
	}

	// Each round echoes on both long-lived connections and makes a new
	// connection of each kind.
	var rounds, failures int
	round := func() {
		rounds++
		for _, c := range held {
			if err := c.Echo(ctx); err != nil {
				failures++
				t.Errorf("round %d: long-lived connection: %v", rounds, err)
			}
		}
		for _, f := range []flow{fromPod, fromOutside} {
			res, err := lab.Send(ctx, f.origin, f.pkt)
			if err == nil {
				err = reached(f.pkt, res)
			}
			if err != nil {
				failures++
				t.Errorf("round %d: new connection: %v", rounds, err)
			}
		}
	}
	roundsFor := func(d time.Duration) int {
		start, n := time.Now(), rounds
		for time.Since(start) < d {
			round()
		}
		return rounds - n
	}

	before := roundsFor(300 * time.Millisecond)
	agent.kill()
	down := roundsFor(500 * time.Millisecond)
	agent.start()
	restart := time.Now()
	during := 0
	for !agent.ready() {
		if time.Since(restart) > 30*time.Second {
			t.Fatal("the restarted agent did not become ready")
		}
		round()
		during++
	}
	ready := time.Since(restart)
	after := roundsFor(500 * time.Millisecond)
	t.Logf("rounds: %d before the kill, %d with no agent, %d while it restarted (ready after %v), %d after; %d failures",
		before, down, during, ready, after, failures)
	if before == 0 || down == 0 || after == 0 {
		t.Errorf("too few rounds to tell: %d before, %d down, %d after", before, down, after)
	}
	if failures > 0 {
		t.Errorf("%d of %d connections failed", failures, 4*rounds)
	}
	for _, c := range held {
		c.Close()
	}
}

type flow struct {
	origin datapath.Origin
	pkt    datapath.Packet
}
