package model

import (
	"slices"

	corev1 "k8s.io/api/core/v1"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// NodeView returns the node resource content for a Node: its zone and the
// addresses NodePorts are served on (InternalIP and ExternalIP, canonical
// only, without duplicates, sorted).
func NodeView(n *corev1.Node) *spokev1.Node {
	out := &spokev1.Node{Name: n.Name, Zone: n.Labels[corev1.LabelTopologyZone]}
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		if _, err := ParseAddr(a.Address); err != nil || slices.Contains(out.Addresses, a.Address) {
			continue
		}
		if len(out.Addresses) == MaxAddresses {
			break
		}
		out.Addresses = append(out.Addresses, a.Address)
	}
	slices.Sort(out.Addresses)
	return out
}
