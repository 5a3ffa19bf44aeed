// Package conformance is the one table of services, endpoints and packets
// that every datapath must pass. A case's Kubernetes objects go through the
// real view computation (controlplane/model) and the agent's decoder
// (nodeagent/view), exactly as in production; the datapath under test then
// programs the result and says where each packet goes.
//
// Caveats: a case names one node under test; packets marked Local start on
// that node (a pod or the host), the others arrive from outside it.
package conformance

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/spoke-proxy/spoke/controlplane/model"
	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/nodeagent/view"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// Case is one cluster state seen from one node, with packets to trace.
type Case struct {
	Name     string
	Services []*corev1.Service
	Slices   []*discoveryv1.EndpointSlice
	// Nodes are the cluster's nodes; Node names the one under test.
	Nodes   []*corev1.Node
	Node    string
	Options model.Options
	Packets []Packet
}

// Packet is a packet to trace and the outcome it must have.
type Packet struct {
	// Origin is FromNode for packets that start on the node under test (a
	// pod or the host), FromOutside for those that arrive from outside.
	Origin datapath.Origin
	datapath.Packet
	// Want is the action; for Forward, Backends lists every acceptable
	// backend.
	Want     datapath.Action
	Backends []netip.AddrPort
	// Sticky packets must reach the backend that the case's previous
	// forwarded packet reached (ClientIP session affinity).
	Sticky bool
}

// Target is a datapath under test that can trace packets.
type Target interface {
	datapath.Datapath
	// Trace returns what happens to the first packet of a connection.
	Trace(ctx context.Context, origin datapath.Origin, pkt datapath.Packet) (datapath.Verdict, error)
}

// KnownGap is implemented by a target that cannot yet do what some packets
// want. Such a packet must come out as the gap says it does: any other
// outcome fails, and so does the wanted one (so that a gap that closes is
// noticed and removed from the list). The test log says why.
type KnownGap interface {
	// KnownGap returns the gap that applies to the packet, or nil.
	KnownGap(p Packet) *Gap
}

// Gap is what a target does instead of what a packet wants, and why.
type Gap struct {
	Why string
	// Got is the action the target takes instead of the wanted one.
	Got datapath.Action
}

// Summary counts the packets of a run by their outcome.
type Summary struct {
	Passed, KnownGaps, Skipped, Failed int
}

func (s Summary) String() string {
	out := fmt.Sprintf("%d passed, %d known gaps, %d skipped", s.Passed, s.KnownGaps, s.Skipped)
	if s.Failed > 0 {
		out += fmt.Sprintf(", %d failed", s.Failed)
	}
	return out
}

// Program computes the views of a case for its node and applies them to a
// datapath.
func Program(ctx context.Context, c *Case, dp datapath.Datapath) error {
	topo := model.Topology{Zones: map[string]string{}}
	var self *corev1.Node
	for _, n := range c.Nodes {
		topo.Zones[n.Name] = n.Labels[corev1.LabelTopologyZone]
		if n.Name == c.Node {
			self = n
		}
	}
	if self == nil {
		return fmt.Errorf("case %s: node %q is not among its nodes", c.Name, c.Node)
	}
	nodeRes := &spokev1.Resource{Name: spokev1.NodeResourceName, Kind: &spokev1.Resource_Node{Node: model.NodeView(self)}}
	node, err := view.Node(nodeRes)
	if err != nil {
		return fmt.Errorf("decoding node: %w", err)
	}
	if err := dp.SetNode(ctx, node); err != nil {
		return fmt.Errorf("setting node: %w", err)
	}
	var upsert []*datapath.Service
	for _, svc := range c.Services {
		var own []*discoveryv1.EndpointSlice
		for _, es := range c.Slices {
			if es.Namespace == svc.Namespace && es.Labels[discoveryv1.LabelServiceName] == svc.Name {
				own = append(own, es)
			}
		}
		views, _ := model.Compute(svc, own, topo, c.Options)
		v := views.For(c.Node, topo.Zones[c.Node])
		if v == nil {
			continue
		}
		r := &spokev1.Resource{Name: v.Namespace + "/" + v.Name, Kind: &spokev1.Resource_Service{Service: v}}
		if r.Version, err = spokev1.ContentVersion(r); err != nil {
			return err
		}
		s, err := view.Service(r)
		if err != nil {
			return fmt.Errorf("decoding %s: %w", r.Name, err)
		}
		upsert = append(upsert, s)
	}
	return dp.Apply(ctx, upsert, nil)
}

// Run runs every case of the table against fresh targets made by newTarget
// and counts the packets by outcome.
func Run(t *testing.T, newTarget func(t *testing.T) Target) Summary {
	var sum Summary
	for _, c := range Cases() {
		t.Run(c.Name, func(t *testing.T) {
			traced := 0
			defer func() {
				if t.Skipped() {
					sum.Skipped += len(c.Packets) - traced
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			target := newTarget(t)
			if err := Program(ctx, &c, target); err != nil {
				t.Fatalf("programming: %v", err)
			}
			var last netip.AddrPort
			for _, p := range c.Packets {
				got, err := target.Trace(ctx, p.Origin, p.Packet)
				if err != nil {
					t.Fatalf("tracing %s: %v", p.Packet, err)
				}
				traced++
				gap, wanted := knownGap(target, p), got.Action == p.Want && (p.Want != datapath.Forward || slices.Contains(p.Backends, got.Backend))
				var problem string
				switch {
				case gap != nil:
					problem = checkGap(p, got, gap, wanted)
					if problem == "" {
						t.Logf("%s: got %s, want %s: a known gap: %s", p.Packet, got, p.Want, gap.Why)
					}
				case !wanted:
					problem = fmt.Sprintf("%s: got %s, want %s %v", p.Packet, got, p.Want, p.Backends)
				case p.Sticky && got.Backend != last:
					problem = fmt.Sprintf("%s: reached %s, want %s as the previous packet (session affinity)", p.Packet, got.Backend, last)
				}
				switch {
				case problem != "":
					t.Error(problem)
					sum.Failed++
				case gap != nil:
					sum.KnownGaps++
				default:
					sum.Passed++
				}
				if got.Action == datapath.Forward {
					last = got.Backend
				}
			}
		})
	}
	return sum
}

// knownGap returns the target's known gap for a packet, if any.
func knownGap(target Target, p Packet) *Gap {
	if kg, ok := target.(KnownGap); ok {
		return kg.KnownGap(p)
	}
	return nil
}

// checkGap returns what is wrong with a packet's outcome under a known gap,
// or "" when it is the outcome the gap names.
func checkGap(p Packet, got datapath.Verdict, gap *Gap, wanted bool) string {
	switch {
	case wanted:
		return fmt.Sprintf("%s: got %s as wanted, but it is listed as a known gap (%s): remove it from the list", p.Packet, got, gap.Why)
	case got.Action != gap.Got:
		return fmt.Sprintf("%s: got %s, want %s, or %s as a known gap (%s)", p.Packet, got, p.Want, gap.Got, gap.Why)
	}
	return ""
}
