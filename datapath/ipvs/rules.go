package ipvs

import (
	"encoding/hex"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// What IPVS cannot express lives in the nftables table spoke-ipvs, as
// kube-proxy's IPVS mode keeps it in iptables rules and ipsets. The rules
// are fixed; everything that depends on the services is in sets and maps,
// so that a plan is data and the whole table is replaced in one
// transaction:
//
//	prerouting (filter, -110): from a device towards other nodes, to a
//	    service or node address (vips): mark masqMark
//	input (filter, 0: before IPVS, at 98) and output (filter, -150: before
//	IPVS, at -98), new connections only:
//	    to a load-balancer frontend with source ranges (firewall) from a
//	        source outside them (allow): drop
//	    input from a device towards other nodes, to a frontend in
//	        outside-drop: drop
//	    from the node (output, or input from any other device), to a
//	        frontend in node-drop: drop
//	    from the node, to a frontend in node-marks: set the mark of the
//	        firewall-mark virtual server that serves it from the node
//	    input to a service address (service-ips) on a port no virtual
//	        server has (frontends): reject
//	postrouting (nat, 100):
//	    leaving on a device towards other nodes, marked masqMark: masquerade
//	    leaving on such a device from a service address (the node's own
//	        connections to one): masquerade
//	    from an endpoint to itself (hairpin: a pod that reached itself
//	        through a service): masquerade
//
// Every set but devices comes in an IPv4 ("4") and an IPv6 ("6") flavour.
// (nft list shows node-marks' values byte-swapped: the library cannot tell
// it their byte order. The kernel reads them in the host's, as it should.)
const (
	tableName = "spoke-ipvs"
	// masqMark marks traffic from outside to a service or node address:
	// if IPVS sends it on to another node, it is masqueraded so that the
	// reply comes back through this node (kube-proxy's 0x4000).
	masqMark = 0x4000
	// markBase is the first firewall mark of the virtual servers that
	// serve traffic from the node; marks are markBase+1 to
	// markBase+maxMarks, which never sets masqMark's bit.
	markBase = 0x1000000
	maxMarks = masqMark - 1
)

// Set names.
const (
	setDevices     = "devices"
	setVIPs        = "vips"
	setServiceIPs  = "service-ips"
	setFrontends   = "frontends"
	setFirewall    = "firewall"
	setAllow       = "allow"
	setOutsideDrop = "outside-drop"
	setNodeDrop    = "node-drop"
	setNodeMarks   = "node-marks"
	setHairpin     = "hairpin"
)

// ruleset is the content of the table's sets: what a plan puts in it.
type ruleset struct {
	devices     []string
	vips        []netip.Addr
	serviceIPs  []netip.Addr
	frontends   []vkey
	firewall    []vkey
	allow       []allowed
	outsideDrop []vkey
	nodeDrop    []vkey
	marks       []marked
	// endpoints are the real servers' addresses, for hairpin traffic.
	endpoints []netip.Addr
}

// allowed is one source range of a firewalled frontend.
type allowed struct {
	key vkey
	src netip.Prefix
}

// marked is the firewall mark traffic from the node to a frontend gets.
type marked struct {
	key  vkey
	mark uint32
}

// add puts one service's virtual servers into the ruleset; marks holds the
// firewall mark of each frontend with a way of its own from the node.
func (rs *ruleset) add(vs []virtual, marks map[vkey]uint32, node []netip.Addr) {
	for _, v := range vs {
		rs.frontends = append(rs.frontends, v.key)
		for _, d := range v.dests {
			rs.endpoints = append(rs.endpoints, d.addr.Addr())
		}
		if v.fromNode != nil {
			for _, d := range v.fromNode.dests {
				rs.endpoints = append(rs.endpoints, d.addr.Addr())
			}
		}
		if v.firewall {
			rs.firewall = append(rs.firewall, v.key)
			for _, p := range v.allow {
				rs.allow = append(rs.allow, allowed{v.key, p})
			}
		}
		if v.drop {
			rs.outsideDrop = append(rs.outsideDrop, v.key)
		}
		switch {
		case v.fromNode != nil:
			if v.fromNode.drop {
				rs.nodeDrop = append(rs.nodeDrop, v.key)
			}
			rs.marks = append(rs.marks, marked{v.key, marks[v.key]})
		case v.drop:
			rs.nodeDrop = append(rs.nodeDrop, v.key)
		}
	}
	addrs := addresses(vs, node)
	rs.serviceIPs = append(rs.serviceIPs, addrs...)
	rs.vips = append(rs.vips, addrs...)
}

// buildRuleset returns the ruleset of every service's plan on a node with
// the given addresses and devices towards other nodes.
func buildRuleset(plans map[string][]virtual, marks map[vkey]uint32, node []netip.Addr, devices []string) *ruleset {
	rs := &ruleset{devices: slices.Clone(devices), vips: slices.Clone(node)}
	for _, vs := range plans {
		rs.add(vs, marks, node)
	}
	slices.Sort(rs.devices)
	rs.devices = slices.Compact(rs.devices)
	for _, s := range []*[]netip.Addr{&rs.vips, &rs.serviceIPs, &rs.endpoints} {
		slices.SortFunc(*s, netip.Addr.Compare)
		*s = slices.Compact(*s)
	}
	for _, s := range []*[]vkey{&rs.frontends, &rs.firewall, &rs.outsideDrop, &rs.nodeDrop} {
		slices.SortFunc(*s, compareKeys)
		*s = slices.Compact(*s)
	}
	slices.SortFunc(rs.allow, func(a, b allowed) int {
		if c := compareKeys(a.key, b.key); c != 0 {
			return c
		}
		return comparePrefixes(a.src, b.src)
	})
	slices.SortFunc(rs.marks, func(a, b marked) int { return compareKeys(a.key, b.key) })
	return rs
}

// elements returns the sets' elements: by set name, each element's
// canonical form (see elementID) mapped to the element.
func (rs *ruleset) elements() map[string]map[string]nftables.SetElement {
	out := map[string]map[string]nftables.SetElement{}
	for _, s := range tableSets() {
		out[s.Name] = map[string]nftables.SetElement{}
	}
	put := func(set string, e nftables.SetElement) { out[set][elementID(e)] = e }
	for _, d := range rs.devices {
		put(setDevices, nftables.SetElement{Key: ifname(d)})
	}
	for _, a := range rs.vips {
		put(setVIPs+fam(a), nftables.SetElement{Key: a.AsSlice()})
	}
	for _, a := range rs.serviceIPs {
		put(setServiceIPs+fam(a), nftables.SetElement{Key: a.AsSlice()})
	}
	for set, keys := range map[string][]vkey{setFrontends: rs.frontends, setFirewall: rs.firewall, setOutsideDrop: rs.outsideDrop, setNodeDrop: rs.nodeDrop} {
		for _, k := range keys {
			put(set+fam(k.addr), nftables.SetElement{Key: frontendBytes(k)})
		}
	}
	for _, a := range rs.allow {
		last := lastAddr(a.src)
		put(setAllow+fam(a.key.addr), nftables.SetElement{
			Key:    append(frontendBytes(a.key), a.src.Addr().AsSlice()...),
			KeyEnd: append(frontendBytes(a.key), last.AsSlice()...),
		})
	}
	for _, a := range rs.endpoints {
		put(setHairpin+fam(a), nftables.SetElement{Key: append(a.AsSlice(), a.AsSlice()...)})
	}
	for _, m := range rs.marks {
		put(setNodeMarks+fam(m.key.addr), nftables.SetElement{Key: frontendBytes(m.key), Val: binaryutil.NativeEndian.PutUint32(m.mark)})
	}
	return out
}

// elementID is an element's canonical form, to compare what is planned
// with what the kernel holds.
func elementID(e nftables.SetElement) string {
	id := hex.EncodeToString(e.Key)
	if len(e.KeyEnd) > 0 {
		id += "-" + hex.EncodeToString(e.KeyEnd)
	}
	if len(e.Val) > 0 {
		id += "=" + hex.EncodeToString(e.Val)
	}
	return id
}

func fam(a netip.Addr) string {
	if a.Is4() {
		return "4"
	}
	return "6"
}

// frontendBytes is a frontend as a concatenation key: address, protocol
// and port, each padded to 4 bytes.
func frontendBytes(k vkey) []byte {
	b := k.addr.AsSlice()
	b = append(b, byte(toProto(k.proto)), 0, 0, 0)
	return append(b, byte(k.port>>8), byte(k.port), 0, 0)
}

// lastAddr is the last address of a prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// ifname is an interface name as nftables compares it: padded with NULs to
// IFNAMSIZ.
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

var (
	frontendType = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	frontend6    = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService)
	allowType    = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeIPAddr)
	allow6       = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeIP6Addr)
	hairpinType  = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeIPAddr)
	hairpin6     = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeIP6Addr)
)

// tableSets returns the table's sets and maps, without their elements.
func tableSets() []*nftables.Set {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: tableName}
	out := []*nftables.Set{{Table: t, Name: setDevices, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian}}
	for _, f := range []struct {
		suffix                   string
		addr, key, allw, hairpin nftables.SetDatatype
	}{{"4", nftables.TypeIPAddr, frontendType, allowType, hairpinType}, {"6", nftables.TypeIP6Addr, frontend6, allow6, hairpin6}} {
		out = append(out,
			&nftables.Set{Table: t, Name: setVIPs + f.suffix, KeyType: f.addr},
			&nftables.Set{Table: t, Name: setServiceIPs + f.suffix, KeyType: f.addr},
			&nftables.Set{Table: t, Name: setFrontends + f.suffix, KeyType: f.key, Concatenation: true},
			&nftables.Set{Table: t, Name: setFirewall + f.suffix, KeyType: f.key, Concatenation: true},
			&nftables.Set{Table: t, Name: setAllow + f.suffix, KeyType: f.allw, Concatenation: true, Interval: true},
			&nftables.Set{Table: t, Name: setOutsideDrop + f.suffix, KeyType: f.key, Concatenation: true},
			&nftables.Set{Table: t, Name: setNodeDrop + f.suffix, KeyType: f.key, Concatenation: true},
			&nftables.Set{Table: t, Name: setNodeMarks + f.suffix, KeyType: f.key, Concatenation: true, IsMap: true, DataType: nftables.TypeMark},
			&nftables.Set{Table: t, Name: setHairpin + f.suffix, KeyType: f.hairpin, Concatenation: true},
		)
	}
	return out
}

// chain is one of the table's base chains with its rules.
type chain struct {
	*nftables.Chain
	rules [][]expr.Any
}

// tableChains returns the table's chains and their rules.
func tableChains() []chain {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: tableName}
	pre := chain{Chain: &nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(-110)}}
	in := chain{Chain: &nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter}}
	out := chain{Chain: &nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityMangle}}
	post := chain{Chain: &nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource}}
	mark := binaryutil.NativeEndian.PutUint32(masqMark)
	zero := []byte{0, 0, 0, 0}
	post.rules = append(post.rules, join(
		[]expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mark, Xor: zero},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: zero},
		},
		device(expr.MetaKeyOIFNAME, false),
		[]expr.Any{&expr.Masq{}},
	))
	for _, f := range families {
		pre.rules = append(pre.rules, join(
			device(expr.MetaKeyIIFNAME, false), f.match(),
			f.addr(f.daddr, 1), lookup(1, setVIPs+f.suffix, false),
			[]expr.Any{
				&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(^uint32(masqMark)), Xor: mark},
				&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
			},
		))
		firewall := join(newConn(), f.match(), f.frontend(), lookup(regConcat, setFirewall+f.suffix, false),
			f.addr(f.saddr, f.srcReg), lookup(regConcat, setAllow+f.suffix, true), drop())
		nodeDrop := func(fromDevice []expr.Any) []expr.Any {
			return join(newConn(), fromDevice, f.match(), f.frontend(), lookup(regConcat, setNodeDrop+f.suffix, false), drop())
		}
		nodeMark := func(fromDevice []expr.Any) []expr.Any {
			return join(newConn(), fromDevice, f.match(), f.frontend(), []expr.Any{
				&expr.Lookup{SourceRegister: regConcat, DestRegister: 1, IsDestRegSet: true, SetName: setNodeMarks + f.suffix},
				&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
			})
		}
		in.rules = append(in.rules,
			firewall,
			join(newConn(), device(expr.MetaKeyIIFNAME, false), f.match(), f.frontend(), lookup(regConcat, setOutsideDrop+f.suffix, false), drop()),
			nodeDrop(device(expr.MetaKeyIIFNAME, true)),
			nodeMark(device(expr.MetaKeyIIFNAME, true)),
			join(newConn(), f.match(), f.addr(f.daddr, 1), lookup(1, setServiceIPs+f.suffix, false),
				f.frontend(), lookup(regConcat, setFrontends+f.suffix, true),
				[]expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}}),
		)
		out.rules = append(out.rules, firewall, nodeDrop(nil), nodeMark(nil))
		post.rules = append(post.rules,
			join(f.match(), device(expr.MetaKeyOIFNAME, false),
				f.addr(f.saddr, 1), lookup(1, setServiceIPs+f.suffix, false), []expr.Any{&expr.Masq{}}),
			join(f.match(), f.addr(f.saddr, regConcat), f.addr(f.daddr, f.pairReg),
				lookup(regConcat, setHairpin+f.suffix, false), []expr.Any{&expr.Masq{}}))
	}
	return []chain{pre, in, out, post}
}

// regConcat is the first 32-bit register, where concatenations start.
var regConcat = reg32(0)

// reg32 returns the number of the 32-bit register NFT_REG32_00+i as the
// kernel reports it back: one that starts a 16-byte register by that
// register's number (NFT_REG32_00 is NFT_REG_1), so that planned rules
// compare equal to what the kernel reads back.
func reg32(i uint32) uint32 {
	if i%4 == 0 {
		return unix.NFT_REG_1 + i/4
	}
	return unix.NFT_REG32_00 + i
}

// ipFamily is how the rules read one address family's packets.
type ipFamily struct {
	suffix       string
	nfproto      byte
	daddr, saddr uint32 // offsets in the network header
	len          uint32 // address length
	// protoReg and portReg hold the protocol and port after the address
	// in a concatenation starting at regConcat; srcReg the source after
	// them; pairReg a second address right after the first.
	protoReg, portReg, srcReg, pairReg uint32
}

var families = []ipFamily{
	{suffix: "4", nfproto: unix.NFPROTO_IPV4, daddr: 16, saddr: 12, len: 4, protoReg: reg32(1), portReg: reg32(2), srcReg: reg32(3), pairReg: reg32(1)},
	{suffix: "6", nfproto: unix.NFPROTO_IPV6, daddr: 24, saddr: 8, len: 16, protoReg: reg32(4), portReg: reg32(5), srcReg: reg32(6), pairReg: reg32(4)},
}

func (f ipFamily) match() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.nfproto}},
	}
}

// addr loads the address at offset into reg.
func (f ipFamily) addr(offset, reg uint32) []expr.Any {
	return []expr.Any{&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: f.len}}
}

// frontend loads destination address, protocol and port as a
// concatenation at regConcat.
func (f ipFamily) frontend() []expr.Any {
	return append(f.addr(f.daddr, regConcat),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: f.protoReg},
		&expr.Payload{DestRegister: f.portReg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	)
}

// device matches the input or output interface against the devices
// towards other nodes, or, inverted, any other interface.
func device(key expr.MetaKey, invert bool) []expr.Any {
	return append([]expr.Any{&expr.Meta{Key: key, Register: 1}}, lookup(1, setDevices, invert)...)
}

func lookup(reg uint32, set string, invert bool) []expr.Any {
	return []expr.Any{&expr.Lookup{SourceRegister: reg, SetName: set, Invert: invert}}
}

// newConn matches the first packets of a connection: established ones
// keep going whatever changed since.
func newConn() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}
}

func drop() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}} }

func join(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
