// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
/* Spoke's eBPF service load balancer: one object, built from headers that
 * each do one job.
 *
 *   lb.h      the maps' keys and values, shared with Go through bpf2go
 *   common.h  the maps, address helpers, frontend lookup, source ranges and
 *             the backend pick, which both paths use
 *   sock.h    socket level: cgroup v2 connect/sendmsg/recvmsg/getpeername
 *   crc32c.h  CRC32c arithmetic for SCTP checksums
 *   tc.h      packet level: tc programs for traffic from outside the node
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/icmpv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "lb.h"

char __license[] SEC("license") = "Dual MIT/GPL";

#include "common.h"
#include "sock.h"
#include "crc32c.h"
#include "tc.h"
