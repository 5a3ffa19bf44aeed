/* Types shared by the programs in lb.c and, through bpf2go, by the Go side.
 * Addresses are 16 bytes in network order; IPv4 is stored IPv4-mapped
 * (::ffff:a.b.c.d), so one set of maps serves both families. Ports are in
 * network order.
 */
#ifndef SPOKE_LB_H
#define SPOKE_LB_H

#include <linux/types.h>

/* The constants Go shares are enums with a fixed underlying type, each the
 * type of the field that holds it, so that bpf2go -type generates them for
 * Go from this file's BTF. */

/* svc_key.scope */
enum spoke_scope : __u8 {
	SCOPE_ADDR = 0,     /* an address of the service */
	SCOPE_NODEPORT = 1, /* every node address (addr is the family's zero) */
};

/* svc_val.kind, addr_key.kind */
enum spoke_kind : __u8 {
	KIND_CLUSTER = 1,
	KIND_EXTERNAL = 2,
	KIND_LB = 3,
	KIND_NODEPORT = 4,
};

/* svc_val.flags */
enum spoke_svc_flags : __u8 {
	SVC_F_SOURCE_RANGES = 1, /* the source must match src_ranges */
};

/* slot_val.no_ep: what a new connection gets when no endpoint is active */
enum spoke_no_endpoints : __u8 {
	NO_EP_REJECT = 1,
	NO_EP_DROP = 2,
};

/* port_info.sets: backend sets present besides Internal */
enum spoke_sets : __u8 {
	SETS_EXTERNAL = 1,
	SETS_FROM_NODE = 2,
};

/* aff_key.flags */
#define AFF_F_COOKIE 1 /* client holds a network namespace cookie */

/* ct_val.flags and rev_val.flags */
#define CT_F_SNAT 1 /* the source was translated to a node address */
#define CT_F_SEEN_ACK 2 /* ct_val: the client has sent more than a SYN */
#define CT_F_POD 4 /* rev_val: a flow from a pod (its replies leave by a pod device) */
#define CT_F_HOST 8 /* rev_val: a flow the node itself sent (its replies are delivered here) */

#define PORT_NAME_LEN 64
#define SVC_KEY_LEN 512

struct addr {
	__be32 w[4];
};

/* services: the frontend map, keyed by address, port and protocol. */
struct svc_key {
	struct addr addr;
	__be16 port;
	__u8 proto;
	enum spoke_scope scope;
};

struct svc_val {
	__u32 svc_id;
	__u32 group_local; /* backends for sockets on this node */
	__u32 group_ext;   /* backends for packets from outside the node */
	enum spoke_kind kind;
	enum spoke_svc_flags flags;
	__u16 pad;
};

/* slots: slot 0 of a group is its header; slots 1..active are the active
 * endpoints, active+1..total the draining ones. */
struct slot_key {
	__u32 group;
	__u32 slot;
};

struct slot_val {
	__u32 backend;  /* slot > 0 */
	__u32 svc_id;   /* owning service */
	__u32 affinity; /* header: ClientIP affinity timeout in seconds, 0 = off */
	__u16 active;   /* header */
	__u16 total;    /* header */
	__u16 pos;      /* slot > 0: index in the service's endpoint list */
	enum spoke_no_endpoints no_ep; /* header */
	__u8 pad;
};

/* backends: backend id -> address. */
struct backend {
	struct addr addr;
	__be16 port;
	__u8 family;
	__u8 pad;
};

/* affinity: (group, client) -> the backend it was last sent to. */
struct aff_key {
	__u32 group;
	__u32 flags;
	struct addr client;
};

struct aff_val {
	__u64 seen; /* CLOCK_MONOTONIC ns */
	__u32 backend;
	__u32 slot;
};

/* src_ranges: LPM trie of loadBalancerSourceRanges per service. prefixlen
 * counts svc_id and family (64 bits) plus the address bits. */
struct range_key {
	__u32 prefixlen;
	__u32 svc_id;
	__u32 family;
	struct addr addr;
};

/* conntrack keys and revnat keys: a packet's tuple as it is seen on the
 * wire. */
struct tuple {
	struct addr saddr;
	struct addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* conntrack: client -> frontend tuple of a flow from outside. */
struct ct_val {
	struct addr backend_addr;
	struct addr nat_addr; /* CT_F_SNAT: the node address used as source */
	__be16 backend_port;
	__be16 nat_port;
	__u32 backend;
	__u32 flags;
	__u32 pad;
};

/* revnat: backend -> client (or node, with CT_F_SNAT) tuple of a reply. */
struct rev_val {
	struct addr frontend;
	struct addr client;
	__be16 frontend_port;
	__be16 client_port;
	__u32 flags;
};

/* sock_revnat: (socket, backend) -> the service address the application
 * asked for, for recvmsg and getpeername. */
struct sock_key {
	__u64 cookie;
	struct addr addr;
	__be16 port;
	__u16 pad;
	__u32 pad2;
};

struct sock_val {
	struct addr addr;
	__be16 port;
	__u16 pad;
};

/* nodes: the node's own addresses, where NodePorts are served. */
struct node_key {
	struct addr addr;
};

/* config: one entry. */
struct cfg_val {
	struct addr node4; /* source for SNAT of IPv4 flows not sent to a node address */
	struct addr node6;
	__u16 snat_min; /* host order */
	__u16 snat_max;
	__u32 flags;
};

/* Metadata read back by the agent only: */

/* port_meta: (service, port index) -> port. */
struct port_key {
	__u32 svc_id;
	__u32 idx;
};

struct port_info {
	__u32 groups[6]; /* [set * 2 + is6] */
	__be16 port;
	__be16 node_port;
	__u8 proto;
	enum spoke_sets sets;
	__u8 name_len;
	__u8 pad;
	char name[PORT_NAME_LEN];
};

/* svc_meta: service id -> service. */
struct svc_info {
	__u64 affinity_ns;
	__u16 health_node_port;
	__u16 key_len;
	__u16 nports;
	__u16 pad;
	char key[SVC_KEY_LEN];
};

/* svc_addrs: (service, kind, position) -> address. */
struct addr_key {
	__u32 svc_id;
	__u16 pos;
	enum spoke_kind kind;
	__u8 pad;
};

#endif
