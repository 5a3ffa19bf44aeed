// Package ipvs programs services into the kernel's IPVS, through
// github.com/moby/ipvs and netlink: one virtual server per service address
// and port (cluster IPs, external IPs, load-balancer IPs, and node ports on
// each node address), round-robin, with masquerading real servers of weight
// 1, or 0 for terminating endpoints (they keep their connections and take
// no new ones), and persistence for ClientIP affinity. Service addresses sit
// on a dummy device (spoke-ipvs0), as kube-proxy's sit on kube-ipvs0.
//
// IPVS is deprecated upstream but many clusters still run it; this
// datapath is the way off kube-proxy for them.
//
// Traffic from outside that IPVS sends on to a backend on another node is
// masqueraded by an nftables table of its own (spoke-ipvs), as kube-proxy
// does with iptables, so that the reply comes back through this node; a
// backend on this node sees the client's address.
//
// Caveats: IPVS cannot express all of a node's view, and kube-proxy's IPVS
// mode adds more iptables rules than this datapath has nftables ones yet.
// Ports a service does not have are refused on its addresses (they are
// local); a Local policy without local endpoints refuses instead of
// dropping; sources outside loadBalancerSourceRanges are not kept out;
// traffic from the node to a Local-policy service's external addresses is
// not short-circuited to every endpoint. The conformance test lists each of
// these as a known gap. The datapath owns the
// namespace's IPVS table: Cleanup flushes all of it. Programmed reads back
// the virtual servers of the services this process programmed; entries an
// earlier process left for services since deleted stay until Cleanup.
package ipvs
