package ebpf

import (
	"crypto/sha256"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/spoke-proxy/spoke/datapath"
)

// A reopened datapath of the same build opens the programs the first one
// pinned instead of loading them again, and they still balance; one that
// finds another build's pins loads its own.
func TestReopenReusesPinnedPrograms(t *testing.T) {
	ctx, d, ns := progRunDatapath(t, netip.MustParseAddr("192.168.0.1"))
	if d.reused {
		t.Fatal("a datapath with nothing pinned reused programs")
	}
	svc := &datapath.Service{Key: "default/sig", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.38")},
		Ports: []datapath.Port{{Name: "sig", Protocol: datapath.SCTP, Port: 3868,
			Internal: datapath.Backends{NoEndpoints: datapath.Reject, Endpoints: []datapath.Endpoint{{Addr: netip.MustParseAddrPort("10.244.1.38:3869")}}}}}}
	if err := d.Apply(ctx, []*datapath.Service{svc}, nil); err != nil {
		t.Fatal(err)
	}
	first := programIDs(t, d)

	d = reopen(t, d)
	if !d.reused {
		t.Fatal("the reopened datapath loaded its programs again")
	}
	if got := programIDs(t, d); got != first {
		t.Errorf("reopened with programs %v, want the pinned %v", got, first)
	}
	pod := netip.MustParseAddrPort("10.244.1.100:40000")
	verdict, out := progRun(t, ns, d.objs.TcPodIngress, sctp(pod, netip.MustParseAddrPort("10.96.0.38:3868")))
	if want := sctp(pod, netip.MustParseAddrPort("10.244.1.38:3869")); verdict != tcActOK || string(out) != string(want) {
		t.Errorf("a reused program: verdict %d, packet translated %v", verdict, string(out) == string(want))
	}

	// Programs whose maps are not the pinned ones (their pins removed and
	// created again) are not taken.
	stale := filepath.Join(d.opts.PinPath, "services")
	if err := os.Remove(stale); err != nil {
		t.Fatal(err)
	}
	d, first = reloaded(t, d, first, "bound to a map that is no longer pinned")

	// Pins of another build are not taken.
	build, err := ebpf.NewMapWithOptions(buildMap, ebpf.MapOptions{PinPath: d.opts.PinPath})
	if err != nil {
		t.Fatal(err)
	}
	defer build.Close()
	if err := build.Put(uint32(0), sha256.Sum256([]byte("another build"))); err != nil {
		t.Fatal(err)
	}
	reloaded(t, d, first, "of another build")
	var pinned [sha256.Size]byte
	if err := build.Lookup(uint32(0), &pinned); err != nil || pinned != thisBuild {
		t.Errorf("build map %x (%v), want this build's", pinned, err)
	}
}

// reloaded reopens d and checks that its programs were loaded afresh, not
// taken from the pins (with the IDs was); it returns the new datapath and
// its programs' IDs.
func reloaded(t *testing.T, d *Datapath, was [2]ebpf.ProgramID, why string) (*Datapath, [2]ebpf.ProgramID) {
	t.Helper()
	d = reopen(t, d)
	ids := programIDs(t, d)
	if d.reused || ids == was {
		t.Fatalf("the datapath reused programs %s", why)
	}
	return d, ids
}

// programIDs returns the kernel's IDs of d's connect4 and tc ingress
// programs.
func programIDs(t *testing.T, d *Datapath) [2]ebpf.ProgramID {
	t.Helper()
	var ids [2]ebpf.ProgramID
	for i, p := range []*ebpf.Program{d.objs.Sock4Connect, d.objs.TcIngress} {
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		ids[i], _ = info.ID()
	}
	return ids
}
