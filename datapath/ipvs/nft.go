package ipvs

import (
	"bytes"
	"errors"
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// table programs and reads back the nftables table of a network
// namespace.
type table struct {
	netns string
}

var nftTable = &nftables.Table{Family: nftables.TableFamilyINet, Name: tableName}

func (t *table) conn(opts ...nftables.ConnOption) (*nftables.Conn, func(), error) {
	if t.netns == "" {
		c, err := nftables.New(opts...)
		return c, func() {}, err
	}
	fd, err := vnetns.GetFromPath(t.netns)
	if err != nil {
		return nil, nil, err
	}
	c, err := nftables.New(append(opts, nftables.WithNetNSFd(int(fd)))...)
	if err != nil {
		fd.Close()
		return nil, nil, err
	}
	return c, func() { fd.Close() }, nil
}

// sendBuffer makes the netlink socket's send buffer hold a batch of the
// given size: a transaction goes out in one sendmsg, which fails beyond
// the buffer's size (by default about 200 KiB, some 4,000 elements). As
// nft does, it forces the size, which CAP_NET_ADMIN allows.
func sendBuffer(size int) nftables.ConnOption {
	return nftables.WithSockOptions(func(c *netlink.Conn) error {
		raw, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		err = raw.Control(func(fd uintptr) {
			serr = errors.Join(unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, size),
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size))
		})
		if err := errors.Join(err, serr); err != nil {
			return fmt.Errorf("setting the netlink send buffer to %d bytes: %w", size, err)
		}
		return nil
	})
}

// replace makes the table hold exactly the ruleset, in one transaction:
// whatever it held before is gone, and no packet sees a half-built table.
func (t *table) replace(rs *ruleset) error {
	elems := rs.elements()
	size := 1 << 20
	for _, es := range elems {
		for _, e := range es {
			size += 64 + len(e.Key) + len(e.KeyEnd) + len(e.Val)
		}
	}
	c, done, err := t.conn(sendBuffer(size))
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	defer done()
	// Adding an existing table is a no-op; deleting it then adding it
	// again replaces whatever it held, in the same transaction.
	c.AddTable(nftTable)
	c.DelTable(nftTable)
	c.AddTable(nftTable)
	for _, s := range tableSets() {
		var vals []nftables.SetElement
		for _, id := range sortedKeys(elems[s.Name]) {
			vals = append(vals, elems[s.Name][id])
		}
		if err := c.AddSet(s, nil); err != nil {
			return fmt.Errorf("nftables set %s: %w", s.Name, err)
		}
		// The elements of one message are one netlink attribute, whose
		// length field has 16 bits.
		for chunk := range slices.Chunk(vals, elementsPerMessage) {
			if err := c.SetAddElements(s, chunk); err != nil {
				return fmt.Errorf("nftables set %s: %w", s.Name, err)
			}
		}
	}
	for _, ch := range tableChains() {
		c.AddChain(ch.Chain)
		for _, r := range ch.rules {
			c.AddRule(&nftables.Rule{Table: nftTable, Chain: ch.Chain, Exprs: r})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("programming nftables table %s: %w", tableName, err)
	}
	return nil
}

// elementsPerMessage keeps a message's elements under 64 KiB: an element
// takes at most about 130 bytes (a 40-byte key, as long a key end, a
// value, their headers).
const elementsPerMessage = 256

// readBack is what the kernel's table holds.
type readBack struct {
	// rulesOK: the chains, their rules and the sets are the planned ones
	// (the sets' elements aside).
	rulesOK bool
	// why says what differs when rules are not OK.
	why string
	// elements by set name, by elementID.
	elements map[string]map[string]bool
}

// has reports whether the table holds every element of a ruleset.
func (r *readBack) has(rs *ruleset) bool {
	for set, es := range rs.elements() {
		for id := range es {
			if !r.elements[set][id] {
				return false
			}
		}
	}
	return true
}

// extra returns the elements the table holds that a ruleset does not, as
// "set element".
func (r *readBack) extra(rs *ruleset) []string {
	want := rs.elements()
	var out []string
	for _, set := range sortedKeys(r.elements) {
		for _, id := range sortedKeys(r.elements[set]) {
			if _, ok := want[set][id]; !ok {
				out = append(out, set+" "+id)
			}
		}
	}
	return out
}

// read reads the table back. A missing table reads as one with no rules.
func (t *table) read() (*readBack, error) {
	c, done, err := t.conn()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	defer done()
	out := &readBack{elements: map[string]map[string]bool{}}
	if _, err := c.ListTableOfFamily(tableName, nftables.TableFamilyINet); err != nil {
		if errors.Is(err, unix.ENOENT) {
			out.why = "no table " + tableName
			return out, nil
		}
		return nil, fmt.Errorf("reading nftables table %s: %w", tableName, err)
	}
	sets, err := c.GetSets(nftTable)
	if err != nil {
		return nil, fmt.Errorf("reading nftables sets: %w", err)
	}
	for _, s := range sets {
		es, err := c.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("reading nftables set %s: %w", s.Name, err)
		}
		ids := map[string]bool{}
		for _, e := range es {
			if e.IntervalEnd {
				continue
			}
			ids[elementID(e)] = true
		}
		out.elements[s.Name] = ids
	}
	out.why = sameSets(sets)
	if out.why == "" {
		if out.why, err = sameChains(c); err != nil {
			return nil, err
		}
	}
	out.rulesOK = out.why == ""
	return out, nil
}

// sameSets returns what differs between the kernel's sets and the
// planned ones (their elements aside), or "".
func sameSets(have []*nftables.Set) string {
	want := tableSets()
	if len(have) != len(want) {
		return fmt.Sprintf("%d sets, want %d", len(have), len(want))
	}
	byName := map[string]*nftables.Set{}
	for _, s := range have {
		byName[s.Name] = s
	}
	for _, w := range want {
		h, ok := byName[w.Name]
		switch {
		case !ok:
			return "no set " + w.Name
		case h.KeyType.Bytes != w.KeyType.Bytes || h.IsMap != w.IsMap || h.Interval != w.Interval ||
			h.Concatenation != w.Concatenation || h.DataType.Bytes != w.DataType.Bytes:
			return "set " + w.Name + " has another type"
		}
	}
	return ""
}

// sameChains returns what differs between the kernel's chains and rules
// and the planned ones, or "". Rules are compared as the kernel encodes
// them.
func sameChains(c *nftables.Conn) (string, error) {
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return "", fmt.Errorf("reading nftables chains: %w", err)
	}
	var have []*nftables.Chain
	for _, ch := range chains {
		if ch.Table.Name == tableName {
			have = append(have, ch)
		}
	}
	want := tableChains()
	if len(have) != len(want) {
		return fmt.Sprintf("%d chains, want %d", len(have), len(want)), nil
	}
	for _, w := range want {
		i := slices.IndexFunc(have, func(h *nftables.Chain) bool { return h.Name == w.Name })
		if i < 0 {
			return "no chain " + w.Name, nil
		}
		h := have[i]
		if h.Type != w.Type || h.Hooknum == nil || *h.Hooknum != *w.Hooknum || h.Priority == nil || *h.Priority != *w.Priority {
			return "chain " + w.Name + " has another type, hook or priority", nil
		}
		rules, err := c.GetRules(nftTable, h)
		if err != nil {
			return "", fmt.Errorf("reading nftables chain %s: %w", w.Name, err)
		}
		if len(rules) != len(w.rules) {
			return fmt.Sprintf("chain %s has %d rules, want %d", w.Name, len(rules), len(w.rules)), nil
		}
		for j, r := range rules {
			same, err := sameExprs(r.Exprs, w.rules[j])
			if err != nil {
				return "", err
			}
			if !same {
				return fmt.Sprintf("chain %s: rule %d differs", w.Name, j), nil
			}
		}
	}
	return "", nil
}

// sameExprs compares two rules' expressions by their netlink encoding.
func sameExprs(a, b []expr.Any) (bool, error) {
	if len(a) != len(b) {
		return false, nil
	}
	for i := range a {
		x, err := expr.Marshal(byte(nftables.TableFamilyINet), a[i])
		if err != nil {
			return false, err
		}
		y, err := expr.Marshal(byte(nftables.TableFamilyINet), b[i])
		if err != nil {
			return false, err
		}
		if !bytes.Equal(x, y) {
			return false, nil
		}
	}
	return true, nil
}

// remove deletes the table.
func (t *table) remove() error {
	c, done, err := t.conn()
	if err != nil {
		return err
	}
	defer done()
	c.AddTable(nftTable)
	c.DelTable(nftTable)
	return c.Flush()
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
