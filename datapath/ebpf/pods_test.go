package ebpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/spoke-proxy/spoke/internal/netns"
	"github.com/spoke-proxy/spoke/internal/testnet"
	"github.com/spoke-proxy/spoke/internal/wait"
)

// Pod devices get the pod programs as they appear, lose them when they go
// or are renamed out of the patterns, and a reopened datapath attaches to
// the devices that appeared while it was closed and drops the pins of
// those that went.
func TestPodDevicesFollowed(t *testing.T) {
	lab := testnet.NewForTest(t, testnet.Options{})
	opts := labOptions(t, lab)
	d := newDatapath(t, opts)
	ns := lab.NodeNS()
	attached := func(dev string, want bool) func() error {
		return func() error {
			got, err := podAttached(d, ns, dev)
			if err == nil && got != want {
				err = fmt.Errorf("%s: pod programs attached %v, want %v", dev, got, want)
			}
			return err
		}
	}
	wait.For(t, 5*time.Second, "the pod device has the pod programs", attached(testnet.PodDevice, true))
	wait.For(t, 5*time.Second, "the external device has none", attached(testnet.ExternalDevice, false))

	addVeth(t, ns, "be90")
	wait.For(t, 5*time.Second, "a new backend device has them", attached("be90", true))
	rename(t, ns, "be90", "other90")
	wait.For(t, 5*time.Second, "a device renamed out of the patterns has them no more", attached("other90", false))
	if _, err := os.Stat(podPin(opts, "ingress", "be90")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin under the renamed device's old name: %v, want none", err)
	}
	addVeth(t, ns, "be91")
	wait.For(t, 5*time.Second, "another new device has them", attached("be91", true))
	delVeth(t, ns, "be91")
	wait.ForTrue(t, 5*time.Second, "a deleted device's pins are gone", func() bool {
		_, err := os.Stat(podPin(opts, "ingress", "be91"))
		return errors.Is(err, os.ErrNotExist)
	})

	// While closed: one device goes, one comes.
	addVeth(t, ns, "be92")
	wait.For(t, 5*time.Second, "be92 has them", attached("be92", true))
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	delVeth(t, ns, "be92")
	addVeth(t, ns, "be93")
	d2, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d2.Close() })
	d = d2
	if err := attached("be93", true)(); err != nil {
		t.Errorf("after reopening: %v", err)
	}
	if _, err := os.Stat(podPin(opts, "ingress", "be92")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin of a device deleted while closed: %v, want none", err)
	}
	if err := attached(testnet.PodDevice, true)(); err != nil {
		t.Errorf("after reopening: %v", err)
	}
}

func podPin(opts Options, dir, dev string) string {
	return filepath.Join(opts.PinPath, linksDir, pod.pin+dir+"_"+dev)
}

// podAttached reports whether dev has d's pod programs in both directions,
// as the kernel has them: tcx links or clsact filters.
func podAttached(d *Datapath, ns *netns.NS, dev string) (bool, error) {
	h, err := netns.Handle(ns.Path())
	if err != nil {
		return false, err
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		return false, err
	}
	for _, dir := range pod.directions {
		info, err := dir.prog(&d.objs).Info()
		if err != nil {
			return false, err
		}
		id, _ := info.ID()
		var tcx *link.QueryResult
		err = ns.Do(func() error {
			tcx, err = link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: dir.tcx})
			if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL) {
				// A kernel without tcx (before 6.6).
				tcx, err = &link.QueryResult{}, nil
			}
			return err
		})
		if err != nil {
			return false, fmt.Errorf("querying tcx programs of %s: %w", dev, err)
		}
		found := slices.ContainsFunc(tcx.Programs, func(p link.AttachedProgram) bool { return p.ID == id })
		filters, err := h.FilterList(l, dir.parent)
		if err != nil {
			return false, err
		}
		for _, f := range filters {
			if bf, ok := f.(*netlink.BpfFilter); ok && bf.Id == int(id) {
				found = true
			}
		}
		if !found {
			return false, nil
		}
	}
	return true, nil
}

// inNS runs fn with a netlink handle in ns.
func inNS(t *testing.T, ns *netns.NS, fn func(h *netlink.Handle) error) {
	t.Helper()
	h, err := netns.Handle(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := fn(h); err != nil {
		t.Fatal(err)
	}
}

func addVeth(t *testing.T, ns *netns.NS, name string) {
	t.Helper()
	inNS(t, ns, func(h *netlink.Handle) error {
		return h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"})
	})
}

func delVeth(t *testing.T, ns *netns.NS, name string) {
	t.Helper()
	inNS(t, ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(name)
		if err != nil {
			return err
		}
		return h.LinkDel(l)
	})
}

func rename(t *testing.T, ns *netns.NS, from, to string) {
	t.Helper()
	inNS(t, ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(from)
		if err != nil {
			return err
		}
		return h.LinkSetName(l, to)
	})
}

// A pod device that is gone by the time the watcher attaches to it (a pod
// created and deleted at once) is no error: its deletion follows.
func TestPodDeviceGoneBeforeAttach(t *testing.T) {
	_, d := labDatapath(t)
	u := netlink.LinkUpdate{Header: unix.NlMsghdr{Type: unix.RTM_NEWLINK},
		Link: &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "be999", Index: 1 << 30}}}
	if err := d.attach.podLink(u); err != nil {
		t.Errorf("attaching to a device that is gone: %v", err)
	}
	d.attach.mu.Lock()
	_, ok := d.attach.pods["be999"]
	d.attach.mu.Unlock()
	if ok {
		t.Error("a device that is gone is counted as attached")
	}
}
