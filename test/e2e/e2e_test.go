// Package e2e runs the control plane and node agents in-process against a
// real kube-apiserver and etcd: objects are created through the API and
// must reach every agent's datapath.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/spoke-proxy/spoke/controlplane/app"
	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/datapath/fault"
	"github.com/spoke-proxy/spoke/datapath/memory"
	"github.com/spoke-proxy/spoke/internal/background"
	"github.com/spoke-proxy/spoke/internal/kubeapi"
	"github.com/spoke-proxy/spoke/internal/wait"
	"github.com/spoke-proxy/spoke/nodeagent/agent"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// cluster is a real API server, an in-process control plane and agents.
type cluster struct {
	t      *testing.T
	client kubernetes.Interface
	cpAddr string
	cp     *app.ControlPlane
	stopCP func()
	agents map[string]*node
}

type node struct {
	name      string
	statePath string
	dp        *memory.Datapath
	faults    *fault.Datapath // dp, failing on request
	agent     *agent.Agent
	stop      func()
}

// startAPI starts a real API server for the test (stopped when it ends)
// and returns it with a client of it.
func startAPI(t *testing.T) (*kubeapi.Server, kubernetes.Interface) {
	t.Helper()
	api := kubeapi.ForTest(t)
	client, err := kubernetes.NewForConfig(api.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	return api, client
}

func startControlPlane(t *testing.T, client kubernetes.Interface, addr string) (*app.ControlPlane, string, func()) {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := app.New(app.Options{Client: client, GRPCListener: lis, Window: 20 * time.Millisecond, MaxDelay: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop := background.Run(context.Background(), t, "control plane", cp.Run)
	return cp, lis.Addr().String(), stop
}

func (c *cluster) startAgent(name string, opts memory.Options) *node {
	t := c.t
	t.Helper()
	n := c.agents[name]
	if n == nil {
		n = &node{name: name, statePath: filepath.Join(t.TempDir(), name+".db")}
		c.agents[name] = n
	}
	n.dp = memory.New(opts)
	n.faults = fault.Wrap(n.dp)
	conn, err := grpc.NewClient(c.cpAddr, append(agent.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	n.agent, err = agent.New(agent.Options{NodeName: name, Conn: conn, Datapath: n.faults, StatePath: n.statePath,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop := background.Run(context.Background(), t, "agent "+name, n.agent.Run)
	n.stop = sync.OnceFunc(func() {
		stop()
		conn.Close()
	})
	t.Cleanup(n.stop)
	return n
}

// settle is how long a change may take to reach the agents.
const settle = 30 * time.Second

func trace(dp *memory.Datapath, dst netip.AddrPort) datapath.Verdict {
	return dp.Trace(datapath.FromNode, datapath.Packet{Protocol: datapath.TCP, Src: netip.MustParseAddrPort("10.0.0.99:40000"), Dst: dst})
}

// everywhere waits until check passes on every agent's datapath.
func (c *cluster) everywhere(what string, check func(dp *memory.Datapath) error) {
	c.t.Helper()
	for _, name := range slices.Sorted(mapsKeys(c.agents)) {
		n := c.agents[name]
		wait.For(c.t, settle, fmt.Sprintf("%s on %s", what, name), func() error { return check(n.dp) })
	}
}

func mapsKeys(m map[string]*node) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func (c *cluster) nodeStatus(name string) *spokev1.NodeStatus {
	resp, err := c.cp.Server.ListNodes(context.Background(), &spokev1.ListNodesRequest{})
	if err != nil {
		c.t.Fatal(err)
	}
	for _, n := range resp.GetNodes() {
		if n.GetNodeName() == name {
			return n
		}
	}
	return nil
}

func (c *cluster) agentState(n *node) *spokev1.GetStateResponse {
	st, err := n.agent.GetState(context.Background(), &spokev1.GetStateRequest{})
	if err != nil {
		c.t.Fatal(err)
	}
	return st
}

// inSync waits until an agent's stream is up with nothing in flight and the
// agent holds its node's whole view.
func (c *cluster) inSync(n *node) {
	c.t.Helper()
	wait.For(c.t, settle, n.name+" in sync", func() error {
		st := c.nodeStatus(n.name)
		if st == nil || st.GetResponsesSent() == 0 || st.GetPendingNonce() != "" {
			return fmt.Errorf("control plane status %v", st)
		}
		if !c.agentState(n).GetConnected() {
			return fmt.Errorf("agent not connected")
		}
		view, err := c.cp.Server.GetNodeView(context.Background(), &spokev1.GetNodeViewRequest{NodeName: n.name})
		if err != nil {
			return err
		}
		held := map[string]string{}
		for _, r := range c.agentState(n).GetCached() {
			held[r.GetName()] = r.GetVersion()
		}
		for _, r := range view.GetResources() {
			if held[r.GetName()] != r.GetVersion() {
				return fmt.Errorf("agent holds %s at %q, view has %q", r.GetName(), held[r.GetName()], r.GetVersion())
			}
		}
		return nil
	})
}

func newNode(name, zone, addr string) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelTopologyZone: zone}},
		Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: addr}}},
	}
}

func newService(ns, name string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
	}
}

func newSlice(ns, svc string, ips ...string) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: svc + "-1", Labels: map[string]string{
			discoveryv1.LabelServiceName: svc, discoveryv1.LabelManagedBy: "e2e.spoke-proxy.io"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for i, ip := range ips {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{ip},
			NodeName:   ptr.To(fmt.Sprintf("node-%d", i%3+1)),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
		})
	}
	return es
}

func TestEndToEnd(t *testing.T) {
	_, client := startAPI(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for i := 1; i <= 3; i++ {
		n := newNode(fmt.Sprintf("node-%d", i), fmt.Sprintf("zone-%d", i), fmt.Sprintf("192.168.0.%d", i))
		if _, err := client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	c := &cluster{t: t, client: client, agents: map[string]*node{}}
	c.cp, c.cpAddr, c.stopCP = startControlPlane(t, client, "127.0.0.1:0")
	for i := 1; i <= 3; i++ {
		c.startAgent(fmt.Sprintf("node-%d", i), memory.Options{})
	}

	var vip netip.AddrPort
	t.Run("service reaches every agent, then scales down and goes", func(t *testing.T) {
		svc, err := client.CoreV1().Services("default").Create(ctx, newService("default", "web"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		vip = netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 80)
		es, err := client.DiscoveryV1().EndpointSlices("default").Create(ctx, newSlice("default", "web", "10.244.1.5", "10.244.2.5", "10.244.3.5"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		c.everywhere("three backends", func(dp *memory.Datapath) error { return backends(dp, "default/web", 3) })
		c.everywhere("traffic forwarded", func(dp *memory.Datapath) error {
			if v := trace(dp, vip); v.Action != datapath.Forward {
				return fmt.Errorf("%s: %v", vip, v)
			}
			return nil
		})

		es.Endpoints = es.Endpoints[:1]
		if _, err := client.DiscoveryV1().EndpointSlices("default").Update(ctx, es, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		c.everywhere("one backend", func(dp *memory.Datapath) error {
			if err := backends(dp, "default/web", 1); err != nil {
				return err
			}
			if v := trace(dp, vip); v.Backend.String() != "10.244.1.5:8080" {
				return fmt.Errorf("%s: %v", vip, v)
			}
			return nil
		})

		if err := client.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		c.everywhere("service gone", func(dp *memory.Datapath) error {
			if v := trace(dp, vip); v.Action != datapath.Pass {
				return fmt.Errorf("%s after delete: %v", vip, v)
			}
			return nil
		})
	})

	// The remaining subtests share one live service.
	svc, err := client.CoreV1().Services("default").Create(ctx, newService("default", "api"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.DiscoveryV1().EndpointSlices("default").Create(ctx, newSlice("default", "api", "10.244.1.7", "10.244.2.7"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	apiVIP := netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 80)
	c.everywhere("api service", func(dp *memory.Datapath) error { return backends(dp, "default/api", 2) })
	for _, n := range c.agents {
		c.inSync(n)
	}

	t.Run("gRPC and view metrics are exported", func(t *testing.T) {
		families, err := c.cp.Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		found := map[string]bool{}
		for _, f := range families {
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "grpc_method" && l.GetValue() == "StreamViews" {
						found[f.GetName()] = true
					}
				}
			}
			if f.GetName() == "spoke_controlplane_connected_agents" && f.GetMetric()[0].GetGauge().GetValue() == 3 {
				found[f.GetName()] = true
			}
		}
		for _, name := range []string{"grpc_server_started_total", "grpc_server_msg_sent_total", "grpc_server_msg_received_total", "spoke_controlplane_connected_agents"} {
			if !found[name] {
				t.Errorf("metric %s missing (or not counting the 3 agents' streams)", name)
			}
		}
	})

	t.Run("restarted agent serves from its state file and receives nothing", func(t *testing.T) {
		n := c.agents["node-2"]
		n.stop()
		n = c.startAgent("node-2", memory.Options{})
		c.inSync(n)
		st := c.agentState(n)
		if st.GetRestoredFromCache() == 0 {
			t.Fatal("nothing restored from the state file")
		}
		if !st.GetCacheAppliedAt().AsTime().Before(st.GetConnectedAt().AsTime()) {
			t.Fatalf("state applied at %v, after connecting at %v", st.GetCacheAppliedAt().AsTime(), st.GetConnectedAt().AsTime())
		}
		if st.GetResourcesReceived() != 0 {
			t.Fatalf("restarted agent received %d resources, want 0", st.GetResourcesReceived())
		}
		if sent := c.nodeStatus("node-2").GetResourcesSent(); sent != 0 {
			t.Fatalf("control plane sent %d resources to the restarted agent, want 0", sent)
		}
		if v := trace(n.dp, apiVIP); v.Action != datapath.Forward {
			t.Fatalf("restarted agent: %v", v)
		}
	})

	t.Run("rejected response keeps last good state and is not resent", func(t *testing.T) {
		n := c.agents["node-3"]
		c.inSync(n)
		// The datapath finds the new service invalid.
		n.faults.FailApply("default/extra", fmt.Errorf("%w: injected", datapath.ErrInvalid), -1)
		defer n.faults.Clear()
		if _, err := client.CoreV1().Services("default").Create(ctx, newService("default", "extra"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		wait.For(t, settle, "the NACK is visible through inspection", func() error {
			st := c.nodeStatus("node-3")
			if st == nil || len(st.GetNacked()) == 0 {
				return fmt.Errorf("no NACK in %v", st)
			}
			if _, ok := st.GetNacked()[0].GetVersions()["default/extra"]; !ok {
				return fmt.Errorf("NACK of %v", st.GetNacked()[0].GetVersions())
			}
			return nil
		})
		if v := trace(n.dp, apiVIP); v.Action != datapath.Forward {
			t.Fatalf("last good state lost: %v", v)
		}
		received := c.agentState(n).GetResourcesReceived()
		// A change to another service flows; the rejected version is not
		// sent again with it.
		es, err := client.DiscoveryV1().EndpointSlices("default").Get(ctx, "api-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		es.Endpoints = es.Endpoints[:1]
		if _, err := client.DiscoveryV1().EndpointSlices("default").Update(ctx, es, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		c.everywhere("api scaled to one", func(dp *memory.Datapath) error { return backends(dp, "default/api", 1) })
		wait.For(t, settle, "node-3 settled", func() error {
			if p := c.nodeStatus("node-3").GetPendingNonce(); p != "" {
				return fmt.Errorf("response %s in flight", p)
			}
			return nil
		})
		if got := c.agentState(n).GetResourcesReceived() - received; got != 1 {
			t.Fatalf("node-3 received %d resources for one change, want 1", got)
		}
		if err := client.CoreV1().Services("default").Delete(ctx, "extra", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("control-plane restart keeps datapaths and resends nothing", func(t *testing.T) {
		for _, n := range c.agents {
			c.inSync(n)
		}
		received := map[string]uint64{}
		for name, n := range c.agents {
			received[name] = c.agentState(n).GetResourcesReceived()
		}
		c.stopCP()
		for name, n := range c.agents {
			wait.For(t, settle, name+" disconnected", func() error {
				if c.agentState(n).GetConnected() {
					return fmt.Errorf("still connected")
				}
				return nil
			})
			if v := trace(n.dp, apiVIP); v.Action != datapath.Forward {
				t.Fatalf("%s with the control plane down: %v", name, v)
			}
		}
		c.cp, _, c.stopCP = startControlPlane(t, client, c.cpAddr)
		for name, n := range c.agents {
			c.inSync(n)
			if got := c.agentState(n).GetResourcesReceived() - received[name]; got != 0 {
				t.Fatalf("%s received %d resources after the restart, want 0", name, got)
			}
			if sent := c.nodeStatus(name).GetResourcesSent(); sent != 0 {
				t.Fatalf("the new control plane sent %s %d resources", name, sent)
			}
		}
	})
}

var errNotYet = errors.New("not yet")

func backends(dp *memory.Datapath, key string, want int) error {
	got, _ := dp.Programmed(context.Background())
	s := got[key]
	if s == nil {
		return fmt.Errorf("%s not programmed", key)
	}
	if n := len(s.Ports[0].Internal.Endpoints); n != want {
		return fmt.Errorf("%s has %d backends, want %d", key, n, want)
	}
	return nil
}
