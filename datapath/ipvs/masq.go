package ipvs

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Source NAT for traffic from outside that IPVS sends to a backend on
// another node, so that the reply comes back through this node, as
// kube-proxy's KUBE-MARK-MASQ and KUBE-POSTROUTING do with iptables. In the
// nftables table spoke-ipvs:
//
//	prerouting: arrived on a device towards other nodes, to a service or
//	            node address (sets vips4, vips6): mark 0x4000
//	postrouting: marked, leaving on such a device: masquerade
//
// A packet for a backend on this node leaves on the backend's own device
// and keeps the client's address; a reply of a local process carries no
// mark.
const (
	tableName = "spoke-ipvs"
	masqMark  = 0x4000
)

// masq holds the nftables objects.
type masq struct {
	netns      string
	table      *nftables.Table
	vips4      *nftables.Set
	vips6      *nftables.Set
	devices    []string
	programmed []netip.Addr
}

func newMasq(netnsPath string, devices []string) *masq {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: tableName}
	return &masq{
		netns: netnsPath, table: t, devices: devices,
		vips4: &nftables.Set{Table: t, Name: "vips4", KeyType: nftables.TypeIPAddr},
		vips6: &nftables.Set{Table: t, Name: "vips6", KeyType: nftables.TypeIP6Addr},
	}
}

func (m *masq) conn() (*nftables.Conn, func(), error) {
	if m.netns == "" {
		c, err := nftables.New()
		return c, func() {}, err
	}
	fd, err := vnetns.GetFromPath(m.netns)
	if err != nil {
		return nil, nil, err
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(fd)))
	if err != nil {
		fd.Close()
		return nil, nil, err
	}
	return c, func() { fd.Close() }, nil
}

// setup replaces the table with one holding the chains, the rules and the
// given addresses, in one transaction.
func (m *masq) setup(vips []netip.Addr) error {
	c, done, err := m.conn()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	defer done()
	// Adding an existing table is a no-op; deleting it then adding it
	// again replaces whatever it held, in the same transaction.
	c.AddTable(m.table)
	c.DelTable(m.table)
	c.AddTable(m.table)
	v4, v6 := elements(vips)
	if err := c.AddSet(m.vips4, v4); err != nil {
		return fmt.Errorf("nftables set: %w", err)
	}
	if err := c.AddSet(m.vips6, v6); err != nil {
		return fmt.Errorf("nftables set: %w", err)
	}
	pre := c.AddChain(&nftables.Chain{Name: "prerouting", Table: m.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(-110)})
	post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: m.table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	mark := binaryutil.NativeEndian.PutUint32(masqMark)
	for _, dev := range m.devices {
		for _, fam := range []struct {
			proto       byte
			offset, len uint32
			set         *nftables.Set
		}{{unix.NFPROTO_IPV4, 16, 4, m.vips4}, {unix.NFPROTO_IPV6, 24, 16, m.vips6}} {
			c.AddRule(&nftables.Rule{Table: m.table, Chain: pre, Exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(dev)},
				&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{fam.proto}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: fam.offset, Len: fam.len},
				&expr.Lookup{SourceRegister: 1, SetName: fam.set.Name, SetID: fam.set.ID},
				&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(^uint32(masqMark)), Xor: mark},
				&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
			}})
		}
		c.AddRule(&nftables.Rule{Table: m.table, Chain: post, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mark, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(dev)},
			&expr.Masq{},
		}})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("programming nftables table %s: %w", tableName, err)
	}
	m.programmed = vips
	return nil
}

// update makes the sets hold vips.
func (m *masq) update(vips []netip.Addr) error {
	if slices.Equal(m.programmed, vips) {
		return nil
	}
	c, done, err := m.conn()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	defer done()
	v4, v6 := elements(vips)
	c.FlushSet(m.vips4)
	c.FlushSet(m.vips6)
	if err := c.SetAddElements(m.vips4, v4); err != nil {
		return err
	}
	if err := c.SetAddElements(m.vips6, v6); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("updating nftables sets: %w", err)
	}
	m.programmed = vips
	return nil
}

// remove deletes the table.
func (m *masq) remove() error {
	c, done, err := m.conn()
	if err != nil {
		return err
	}
	defer done()
	c.AddTable(m.table)
	c.DelTable(m.table)
	return c.Flush()
}

func elements(vips []netip.Addr) (v4, v6 []nftables.SetElement) {
	for _, a := range vips {
		if a.Is4() {
			v4 = append(v4, nftables.SetElement{Key: a.AsSlice()})
		} else {
			v6 = append(v6, nftables.SetElement{Key: a.AsSlice()})
		}
	}
	return v4, v6
}

// ifname is an interface name as nftables compares it: padded with NULs to
// IFNAMSIZ.
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}
