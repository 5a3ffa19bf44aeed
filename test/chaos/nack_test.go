package chaos

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/datapath/fault"
	"github.com/spoke-proxy/spoke/datapath/memory"
	"github.com/spoke-proxy/spoke/internal/background"
	"github.com/spoke-proxy/spoke/nodeagent/agent"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// TestScenario6NackOnceTransientRetried: the agent's datapath refuses a
// service as invalid, then fails another with ENOMEM a few times. The
// invalid version is NACKed once and never sent again while other changes
// flow; a later good version of it is applied; the transient failure is
// retried and applied with no NACK and no new version. The control plane
// is the real binary on a real API server; the agent runs in this process
// so that its datapath can fail on request.
func TestScenario6NackOnceTransientRetried(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), pick(2*time.Minute, 6*time.Minute))
	defer cancel()
	api := startAPI(t)
	api.addNode(ctx, t, "s6-node-1", "192.168.0.1")
	api.create(ctx, t, service("steady", "", 0), slice("steady", "10.244.1.1"))
	cp := newControlPlane(t, "controlplane", api.kubeconfig)
	cp.startReady(ctx)

	mem := memory.New(memory.Options{})
	dp := fault.Wrap(mem)
	conn, err := grpc.NewClient(cp.grpcAddr, append(agent.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	a, err := agent.New(agent.Options{NodeName: "s6-node-1", Conn: conn, Datapath: dp,
		StatePath: filepath.Join(t.TempDir(), "state.db"), RepairInterval: 200 * time.Millisecond,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer background.Run(ctx, t, "agent", a.Run)()
	st := func() *spokev1.GetStateResponse {
		s, err := a.GetState(ctx, &spokev1.GetStateRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// rejected is the service whose version the agent refused, which it
	// does not hold while the view has it.
	rejected := ""
	inSync := func(what string) {
		t.Helper()
		eventually(ctx, t, what, func() error {
			view, err := cp.view(ctx, "s6-node-1")
			if err != nil {
				return err
			}
			delete(view, rejected)
			if held := versions(st().GetCached()); len(diff(held, view)) > 0 {
				return fmt.Errorf("agent differs from its view: %s", diff(held, view))
			}
			ns, err := cp.status(ctx, "s6-node-1")
			if err != nil {
				return err
			}
			if ns.GetPendingNonce() != "" {
				return fmt.Errorf("response %s in flight", ns.GetPendingNonce())
			}
			return nil
		})
	}
	inSync("first sync")
	steadyIP := clusterIP(ctx, t, api, "steady")

	rounds := pick(1, 10)
	for i := range rounds {
		name := fmt.Sprintf("bad-%d", i)
		key := api.key(name)
		dp.FailApply(key, fmt.Errorf("%w %s: injected", datapath.ErrInvalid, key), -1)
		rejected = key
		if _, err := api.client.DiscoveryV1().EndpointSlices(api.ns).Create(ctx, slice(name, "10.244.2.1"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		api.create(ctx, t, service(name, "", 0), nil)
		eventually(ctx, t, "the NACK of "+key, func() error {
			if n := st().GetNacks(); n != uint64(i+1) {
				return fmt.Errorf("%d NACKs", n)
			}
			return nil
		})
		// Other changes flow; the rejected version is not sent with them.
		received := st().GetResourcesReceived()
		const changes = 3
		for j := range changes {
			api.setEndpoints(ctx, t, "steady", fmt.Sprintf("10.244.1.%d", 10*i+j+2))
			want := fmt.Sprintf("10.244.1.%d:8080", 10*i+j+2)
			eventually(ctx, t, "steady moved to "+want, func() error {
				if v := mem.Trace(datapath.FromNode, pod(steadyIP)); v.Backend.String() != want {
					return fmt.Errorf("steady: %v", v)
				}
				return nil
			})
		}
		inSync("after the other changes")
		if got := st().GetResourcesReceived() - received; got != changes {
			t.Fatalf("round %d: the agent received %d resources for %d changes of another service: the NACKed version was resent", i, got, changes)
		}
		if n := st().GetNacks(); n != uint64(i+1) {
			t.Fatalf("round %d: %d NACKs, want %d: a rejected version came again", i, n, i+1)
		}
		// A later good version is applied.
		dp.Clear()
		rejected = ""
		api.setEndpoints(ctx, t, name, "10.244.2.2")
		badIP := clusterIP(ctx, t, api, name)
		eventually(ctx, t, "the good version of "+key, func() error {
			if v := mem.Trace(datapath.FromNode, pod(badIP)); v.Backend.String() != "10.244.2.2:8080" {
				return fmt.Errorf("%s: %v", key, v)
			}
			return nil
		})
	}
	if got := cp.metric("spoke_controlplane_nacks_total", ""); got != float64(rounds) {
		t.Errorf("the control plane counted %v NACKs, want %d", got, rounds)
	}

	// A transient failure: retried, applied, never NACKed, no new version.
	inSync("before the transient failure")
	nacks, received := st().GetNacks(), st().GetResourcesReceived()
	failures := pick(3, 20)
	dp.FailApply(api.key("flaky"), syscall.ENOMEM, failures)
	// The slice first: the service then comes with its endpoints, as one
	// version.
	if _, err := api.client.DiscoveryV1().EndpointSlices(api.ns).Create(ctx, slice("flaky", "10.244.3.1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	api.create(ctx, t, service("flaky", "", 0), nil)
	flakyIP := clusterIP(ctx, t, api, "flaky")
	eventually(ctx, t, "flaky applied after its failures", func() error {
		if v := mem.Trace(datapath.FromNode, pod(flakyIP)); v.Backend.String() != "10.244.3.1:8080" {
			return fmt.Errorf("flaky: %v", v)
		}
		return nil
	})
	inSync("after the transient failure")
	if got := st().GetNacks() - nacks; got != 0 {
		t.Errorf("a transient failure was NACKed %d times: %s", got, st().GetLastNack())
	}
	if got := st().GetResourcesReceived() - received; got != 1 {
		t.Errorf("the agent received %d resources to apply one service after %d transient failures, want 1", got, failures)
	}
	t.Logf("%d invalid versions NACKed once each; a transient failure retried %d times and applied with 1 resource received", rounds, failures)
}

// pod is a TCP packet from a pod to a cluster IP's port 80.
func pod(ip netip.Addr) datapath.Packet {
	return datapath.Packet{Protocol: datapath.TCP, Src: netip.MustParseAddrPort("10.244.9.9:40000"), Dst: netip.AddrPortFrom(ip, 80)}
}

func clusterIP(ctx context.Context, t *testing.T, a *api, name string) netip.Addr {
	t.Helper()
	s, err := a.client.CoreV1().Services(a.ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return netip.MustParseAddr(s.Spec.ClusterIP)
}
