package conformance

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/spoke-proxy/spoke/datapath"
)

// TestCheckGap checks that a known gap accepts only the outcome it names:
// neither another wrong outcome nor the wanted one.
func TestCheckGap(t *testing.T) {
	p := Packet{Packet: datapath.Packet{Protocol: datapath.TCP, Src: netip.MustParseAddrPort("10.244.1.100:40000"),
		Dst: netip.MustParseAddrPort("198.51.100.10:80")}, Want: datapath.Discard}
	gap := &Gap{Got: datapath.Refuse, Why: "a reason"}
	backend := netip.MustParseAddrPort("10.244.2.5:8080")
	for _, tc := range []struct {
		got    datapath.Verdict
		wanted bool
		fails  string // what the problem says, or "" for none
	}{
		{got: datapath.Verdict{Action: datapath.Refuse}},
		{got: datapath.Verdict{Action: datapath.Forward, Backend: backend}, fails: "or reject as a known gap"},
		{got: datapath.Verdict{Action: datapath.Pass}, fails: "or reject as a known gap"},
		{got: datapath.Verdict{Action: datapath.Discard}, wanted: true, fails: "remove it from the list"},
	} {
		problem := checkGap(p, tc.got, gap, tc.wanted)
		switch {
		case tc.fails == "" && problem != "":
			t.Errorf("got %s under a gap for %s: %q, want no problem", tc.got, gap.Got, problem)
		case tc.fails != "" && !strings.Contains(problem, tc.fails):
			t.Errorf("got %s under a gap for %s: %q, want a problem saying %q", tc.got, gap.Got, problem, tc.fails)
		}
	}
}
