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
// What IPVS cannot express is in the nftables table spoke-ipvs (inet), as
// kube-proxy's IPVS mode keeps it in iptables rules and ipsets (rules.go
// draws it): sources outside loadBalancerSourceRanges are dropped; new
// connections under a Local policy without a local endpoint are dropped
// before IPVS, which would refuse them; traffic from the node to a Local
// policy's external addresses is marked for a firewall-mark virtual server
// that reaches every endpoint (IPVS looks marks up before addresses); a new
// connection to a port no service has on a service address is rejected;
// traffic from outside that IPVS sends to a backend on another node, the
// node's own connections from a service address, and a backend's
// connections that IPVS sends back to itself (hairpin) are masqueraded,
// so that replies come back through this node. The rules are fixed and what
// the services need is in sets and maps, computed by a pure plan; every
// change replaces the whole table in one transaction.
//
// Caveats: "from the node" means the output hook, or arriving on any
// interface but those towards other nodes (Options.Devices): with an
// overlay whose device is not among them, other nodes' pods count as the
// node's. The firewall marks (0x1000001 up) share skb->mark with other
// software. An Apply that changes any of the table's content (a service's
// addresses, policies, or endpoints, which the hairpin set holds) replaces
// the whole table: its cost grows with every service of the node, not with
// the change (about 0.3 s for 5,000 services on a busy 2-core machine,
// BenchmarkReplaceTable). A port a service lacks on its address is rejected, as in
// kube-proxy's IPVS mode, not passed on as the eBPF datapath does: IPVS
// serves only the node's own addresses. The datapath owns the namespace's
// IPVS table: Programmed reports virtual servers and dummy-device addresses
// no service planned (an earlier process's, or anyone's), and table
// content no service needs, under keys that start with "ipvs leftover: ",
// which Apply removes; Cleanup flushes all of it.
package ipvs
