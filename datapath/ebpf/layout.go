package ebpf

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/spoke-proxy/spoke/datapath"
)

// Constants shared with bpf/lb.h: the enums bpf2go generates from it, the
// array lengths of its structs, and the protocols' numbers.
const (
	scopeAddr     = lbSpokeScopeSCOPE_ADDR
	scopeNodePort = lbSpokeScopeSCOPE_NODEPORT

	kindCluster  = lbSpokeKindKIND_CLUSTER
	kindExternal = lbSpokeKindKIND_EXTERNAL
	kindLB       = lbSpokeKindKIND_LB
	kindNodePort = lbSpokeKindKIND_NODEPORT

	svcFlagSourceRanges = lbSpokeSvcFlagsSVC_F_SOURCE_RANGES

	noEndpointsReject = lbSpokeNoEndpointsNO_EP_REJECT
	noEndpointsDrop   = lbSpokeNoEndpointsNO_EP_DROP

	setsExternal = lbSpokeSetsSETS_EXTERNAL // port_info.sets bits
	setsFromNode = lbSpokeSetsSETS_FROM_NODE

	portNameLen = len(lbPortInfo{}.Name)
	svcKeyLen   = len(lbSvcInfo{}.Key)

	protoTCP  = unix.IPPROTO_TCP
	protoUDP  = unix.IPPROTO_UDP
	protoSCTP = unix.IPPROTO_SCTP
)

// The backend sets of a port, as indexes into port_info.groups (set * 2 +
// is IPv6), which only the agent writes and reads.
const (
	setInternal = 0
	setExternal = 1
	setFromNode = 2
)

// toAddr stores an address in the maps' 16-byte form: IPv4 as IPv4-mapped
// IPv6, in network byte order.
func toAddr(a netip.Addr) lbAddr {
	b := a.As16()
	var out lbAddr
	for i := range out.W {
		out.W[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return out
}

// fromAddr is the inverse of toAddr.
func fromAddr(a lbAddr) netip.Addr {
	var b [16]byte
	for i, w := range a.W {
		binary.NativeEndian.PutUint32(b[4*i:], w)
	}
	return netip.AddrFrom16(b).Unmap()
}

// zeroAddr is the key address of a NodePort frontend of a family.
func zeroAddr(is4 bool) lbAddr {
	if is4 {
		return toAddr(netip.IPv4Unspecified())
	}
	return toAddr(netip.IPv6Unspecified())
}

// toPort stores a port in network byte order.
func toPort(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

// fromPort is the inverse of toPort.
func fromPort(p uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], p)
	return binary.BigEndian.Uint16(b[:])
}

func toProto(p datapath.Protocol) (uint8, error) {
	switch p {
	case datapath.TCP:
		return protoTCP, nil
	case datapath.UDP:
		return protoUDP, nil
	case datapath.SCTP:
		return protoSCTP, nil
	}
	return 0, fmt.Errorf("%w: protocol %s", datapath.ErrInvalid, p)
}

func fromProto(p uint8) (datapath.Protocol, error) {
	switch p {
	case protoTCP:
		return datapath.TCP, nil
	case protoUDP:
		return datapath.UDP, nil
	case protoSCTP:
		return datapath.SCTP, nil
	}
	return 0, fmt.Errorf("protocol number %d", p)
}

func toNoEndpoints(n datapath.NoEndpoints) lbSpokeNoEndpoints {
	if n == datapath.Drop {
		return noEndpointsDrop
	}
	return noEndpointsReject
}

func fromNoEndpoints(n lbSpokeNoEndpoints) datapath.NoEndpoints {
	if n == noEndpointsDrop {
		return datapath.Drop
	}
	return datapath.Reject
}

func family(a netip.Addr) int {
	if a.Is4() {
		return 4
	}
	return 6
}

// famIndex is 0 for IPv4, 1 for IPv6: the offset of a family's group.
func famIndex(is4 bool) int {
	if is4 {
		return 0
	}
	return 1
}

// rangeKey is the LPM key of a source range of a service.
func rangeKey(svcID uint32, p netip.Prefix) lbRangeKey {
	bits := uint32(p.Bits())
	fam := uint32(6)
	if p.Addr().Is4() {
		bits += 96
		fam = 4
	}
	return lbRangeKey{Prefixlen: 64 + bits, SvcId: svcID, Family: fam, Addr: toAddr(p.Addr())}
}

// fromRangeKey is the inverse of rangeKey.
func fromRangeKey(k lbRangeKey) (netip.Prefix, error) {
	a := fromAddr(k.Addr)
	bits := int(k.Prefixlen) - 64
	if k.Family == 4 {
		bits -= 96
	}
	if bits < 0 || (k.Family == 4) != a.Is4() {
		return netip.Prefix{}, fmt.Errorf("source range key %+v", k)
	}
	return a.Prefix(bits)
}

// putString copies s into a fixed C char array.
func putString(dst []int8, s string) bool {
	if len(s) > len(dst) {
		return false
	}
	for i := range dst {
		dst[i] = 0
	}
	for i := 0; i < len(s); i++ {
		dst[i] = int8(s[i])
	}
	return true
}

func getString(src []int8, n int) string {
	if n > len(src) {
		n = len(src)
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(src[i])
	}
	return string(b)
}
