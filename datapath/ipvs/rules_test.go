package ipvs

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/internal/testnet"
)

// testRuleset is a ruleset with something in every set.
func testRuleset() *ruleset {
	lb := vkey{addr: a("198.51.100.10"), proto: datapath.TCP, port: 80}
	lb6 := vkey{addr: a("2001:db8:51::10"), proto: datapath.UDP, port: 53}
	plans := map[string][]virtual{
		"default/web": {
			{key: vkey{addr: a("10.96.0.10"), proto: datapath.TCP, port: 80}, drop: true, dests: []dest{{ap("10.244.1.5:8080"), 0}}},
			{key: lb, firewall: true, allow: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}, fromNode: &nodePath{drop: true}},
			{key: vkey{addr: a("192.168.0.1"), proto: datapath.TCP, port: 30080}, drop: true, fromNode: &nodePath{dests: []dest{{ap("10.244.2.5:8080"), 1}}}},
		},
		"default/dns": {{key: lb6, firewall: true, allow: []netip.Prefix{netip.MustParsePrefix("2001:db8:99::/48")}}},
	}
	marks := map[vkey]uint32{lb: markBase + 1, {addr: a("192.168.0.1"), proto: datapath.TCP, port: 30080}: markBase + 2}
	return buildRuleset(plans, marks, []netip.Addr{a("192.168.0.1")}, []string{"eth0"})
}

func TestBuildRuleset(t *testing.T) {
	rs := testRuleset()
	lb := vkey{addr: a("198.51.100.10"), proto: datapath.TCP, port: 80}
	np := vkey{addr: a("192.168.0.1"), proto: datapath.TCP, port: 30080}
	cluster := vkey{addr: a("10.96.0.10"), proto: datapath.TCP, port: 80}
	lb6 := vkey{addr: a("2001:db8:51::10"), proto: datapath.UDP, port: 53}
	want := &ruleset{
		devices:     []string{"eth0"},
		vips:        []netip.Addr{a("10.96.0.10"), a("192.168.0.1"), a("198.51.100.10"), a("2001:db8:51::10")},
		serviceIPs:  []netip.Addr{a("10.96.0.10"), a("198.51.100.10"), a("2001:db8:51::10")},
		frontends:   []vkey{cluster, np, lb, lb6},
		firewall:    []vkey{lb, lb6},
		allow:       []allowed{{lb, netip.MustParsePrefix("203.0.113.0/24")}, {lb6, netip.MustParsePrefix("2001:db8:99::/48")}},
		outsideDrop: []vkey{cluster, np},
		nodeDrop:    []vkey{cluster, lb},
		marks:       []marked{{np, markBase + 2}, {lb, markBase + 1}},
		endpoints:   []netip.Addr{a("10.244.1.5"), a("10.244.2.5")},
	}
	if !reflect.DeepEqual(rs, want) {
		t.Fatalf("ruleset:\n got %+v\nwant %+v", rs, want)
	}
	el := rs.elements()
	check := func(set, id string) {
		t.Helper()
		if _, ok := el[set][id]; !ok {
			t.Errorf("set %s lacks %s; has %v", set, id, slices.Sorted(func(yield func(string) bool) {
				for k := range el[set] {
					if !yield(k) {
						return
					}
				}
			}))
		}
	}
	// 198.51.100.10, TCP (6), port 80, each padded to 4 bytes.
	check("frontends4", "c633640a"+"06000000"+"00500000")
	check("allow4", "c633640a0600000000500000cb007100-c633640a0600000000500000cb0071ff")
	check("frontends6", "20010db8005100000000000000000010"+"11000000"+"00350000")
	check("allow6", "20010db8005100000000000000000010110000000035000020010db8009900000000000000000000-"+
		"20010db80051000000000000000000101100000000350000"+"20010db80099ffffffffffffffffffff")
	check("hairpin4", "0af40105"+"0af40105")
	check("devices", "6574683000000000000000000000000000"[:32])
	if len(el["node-marks4"]) != 2 {
		t.Errorf("node-marks4 has %d elements, want 2", len(el["node-marks4"]))
	}
}

func TestLastAddr(t *testing.T) {
	for p, want := range map[string]string{
		"203.0.113.0/24": "203.0.113.255", "10.0.0.1/32": "10.0.0.1", "0.0.0.0/0": "255.255.255.255",
		"2001:db8::/32": "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "10.0.0.0/9": "10.127.255.255",
	} {
		if got := lastAddr(netip.MustParsePrefix(p)); got != a(want) {
			t.Errorf("lastAddr(%s) = %s, want %s", p, got, want)
		}
	}
}

// TestTableReadBack programs the table into a real kernel's nf_tables (in
// a namespace of its own: the host kernel has nf_tables even where it has
// no IPVS), reads it back, and checks that the read-back notices what
// someone else changes.
func TestTableReadBack(t *testing.T) {
	ns := testnet.NetNS(t)
	tb := &table{netns: ns.Path()}
	rs := testRuleset()
	replaceAndCheck(t, tb, rs)
	// Replacing it again is one transaction that leaves exactly rs.
	if err := tb.replace(rs); err != nil {
		t.Fatal(err)
	}
	lb := vkey{addr: a("198.51.100.10"), proto: datapath.TCP, port: 80}
	other := vkey{addr: a("10.96.0.99"), proto: datapath.TCP, port: 80}
	for _, tc := range []struct {
		name   string
		damage func(c *nftables.Conn) error
		check  func(rb *readBack) bool
	}{
		{"an element deleted", func(c *nftables.Conn) error {
			return c.SetDeleteElements(tableSet(t, "firewall4"), []nftables.SetElement{{Key: frontendBytes(lb)}})
		}, func(rb *readBack) bool { return rb.rulesOK && !rb.has(rs) }},
		{"an element added", func(c *nftables.Conn) error {
			return c.SetAddElements(tableSet(t, "outside-drop4"), []nftables.SetElement{{Key: frontendBytes(other)}})
		}, func(rb *readBack) bool { return rb.rulesOK && rb.has(rs) && len(rb.extra(rs)) == 1 }},
		{"a chain flushed", func(c *nftables.Conn) error {
			c.FlushChain(tableChain(t, "output"))
			return nil
		}, func(rb *readBack) bool { return !rb.rulesOK }},
		{"a rule added", func(c *nftables.Conn) error {
			c.AddRule(&nftables.Rule{Table: nftTable, Chain: tableChain(t, "input"), Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}})
			return nil
		}, func(rb *readBack) bool { return !rb.rulesOK }},
		{"a rule changed", func(c *nftables.Conn) error {
			// The same number of rules, the first one without its mark test.
			post := tableChains()[3]
			c.FlushChain(post.Chain)
			for i, r := range post.rules {
				if i == 0 {
					r = r[3:]
				}
				c.AddRule(&nftables.Rule{Table: nftTable, Chain: post.Chain, Exprs: r})
			}
			return nil
		}, func(rb *readBack) bool { return !rb.rulesOK }},
		{"the table deleted", func(c *nftables.Conn) error {
			c.DelTable(nftTable)
			return nil
		}, func(rb *readBack) bool { return !rb.rulesOK && !rb.has(rs) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tb.replace(rs); err != nil {
				t.Fatal(err)
			}
			c, done, err := tb.conn()
			if err != nil {
				t.Fatal(err)
			}
			defer done()
			if err := tc.damage(c); err != nil {
				t.Fatal(err)
			}
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
			rb, err := tb.read()
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(rb) {
				t.Errorf("read back: rules ok %v (%s), has %v, extra %v", rb.rulesOK, rb.why, rb.has(rs), rb.extra(rs))
			}
		})
	}
	if err := tb.remove(); err != nil {
		t.Fatal(err)
	}
	rb, err := tb.read()
	if err != nil || rb.rulesOK {
		t.Errorf("after remove: %+v, %v", rb, err)
	}
}

// replaceAndCheck replaces the table with rs and checks that it reads back
// as exactly rs.
func replaceAndCheck(t *testing.T, tb *table, rs *ruleset) {
	t.Helper()
	if err := tb.replace(rs); err != nil {
		t.Fatal(err)
	}
	rb, err := tb.read()
	if err != nil {
		t.Fatal(err)
	}
	if extra := rb.extra(rs); !rb.rulesOK || !rb.has(rs) || len(extra) > 0 {
		t.Fatalf("read back: rules ok %v (%s), has %v, %d extra %q", rb.rulesOK, rb.why, rb.has(rs), len(extra), extra[:min(len(extra), 10)])
	}
}

// tableSet returns the set of the planned table named name.
func tableSet(t *testing.T, name string) *nftables.Set {
	t.Helper()
	for _, s := range tableSets() {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no set %s", name)
	return nil
}

// tableChain returns the chain of the planned table named name.
func tableChain(t *testing.T, name string) *nftables.Chain {
	t.Helper()
	for _, c := range tableChains() {
		if c.Name == name {
			return c.Chain
		}
	}
	t.Fatalf("no chain %s", name)
	return nil
}
