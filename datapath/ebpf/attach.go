package ebpf

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/spoke-proxy/spoke/internal/netns"
)

// Names of pins. Links are pinned under <PinPath>/links.
const (
	linksDir     = "links"
	cgroupPrefix = "cgroup_"
	// clsact filters of both roles share a handle and priority, so that a
	// device that changes role has its filter replaced atomically.
	filterHandle   = 0x5b0c
	filterPriority = 1
)

type hook struct {
	name   string
	attach ebpf.AttachType
	prog   func(*lbObjects) *ebpf.Program
}

var cgroupHooks = []hook{
	{"connect4", ebpf.AttachCGroupInet4Connect, func(o *lbObjects) *ebpf.Program { return o.Sock4Connect }},
	{"connect6", ebpf.AttachCGroupInet6Connect, func(o *lbObjects) *ebpf.Program { return o.Sock6Connect }},
	{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, func(o *lbObjects) *ebpf.Program { return o.Sock4Sendmsg }},
	{"sendmsg6", ebpf.AttachCGroupUDP6Sendmsg, func(o *lbObjects) *ebpf.Program { return o.Sock6Sendmsg }},
	{"recvmsg4", ebpf.AttachCGroupUDP4Recvmsg, func(o *lbObjects) *ebpf.Program { return o.Sock4Recvmsg }},
	{"recvmsg6", ebpf.AttachCGroupUDP6Recvmsg, func(o *lbObjects) *ebpf.Program { return o.Sock6Recvmsg }},
	{"getpeername4", ebpf.AttachCgroupInet4GetPeername, func(o *lbObjects) *ebpf.Program { return o.Sock4Getpeername }},
	{"getpeername6", ebpf.AttachCgroupInet6GetPeername, func(o *lbObjects) *ebpf.Program { return o.Sock6Getpeername }},
}

type direction struct {
	name   string
	tcx    ebpf.AttachType
	parent uint32
	prog   func(*lbObjects) *ebpf.Program
}

// role is what a device is to the datapath, and so which tc programs it
// gets: tcx links are pinned as <pin><direction>_<device>, clsact filters
// are named <filter><direction>.
type role struct {
	pin, filter string
	directions  []direction
}

var (
	// external devices: where traffic from outside the node arrives.
	external = role{pin: "tcx_", filter: "spoke_", directions: []direction{
		{"ingress", ebpf.AttachTCXIngress, netlink.HANDLE_MIN_INGRESS, func(o *lbObjects) *ebpf.Program { return o.TcIngress }},
		{"egress", ebpf.AttachTCXEgress, netlink.HANDLE_MIN_EGRESS, func(o *lbObjects) *ebpf.Program { return o.TcEgress }},
	}}
	// pod devices: where the node's pods send from (SCTP to services).
	pod = role{pin: "tcxpod_", filter: "spokepod_", directions: []direction{
		{"ingress", ebpf.AttachTCXIngress, netlink.HANDLE_MIN_INGRESS, func(o *lbObjects) *ebpf.Program { return o.TcPodIngress }},
		{"egress", ebpf.AttachTCXEgress, netlink.HANDLE_MIN_EGRESS, func(o *lbObjects) *ebpf.Program { return o.TcPodEgress }},
	}}
	roles = []role{external, pod}
)

// pinDevice returns the device a tcx pin of r was made for, or false when
// the pin is not one of r's.
func (r role) pinDevice(pin string) (string, bool) {
	rest, ok := strings.CutPrefix(filepath.Base(pin), r.pin)
	if !ok {
		return "", false
	}
	_, dev, ok := strings.Cut(rest, "_")
	return dev, ok
}

// attachments are the datapath's links and filters.
type attachments struct {
	opts  Options
	objs  *lbObjects
	dir   string
	links []link.Link

	mu sync.Mutex
	// devs and pods are the attached devices of each role: name -> ifindex.
	devs, pods map[string]int

	// stop ends the pod device watcher; watching is done once it has.
	stop     chan struct{}
	watching sync.WaitGroup
}

func newAttachments(opts Options, objs *lbObjects) *attachments {
	return &attachments{opts: opts, objs: objs, dir: filepath.Join(opts.PinPath, linksDir),
		devs: map[string]int{}, pods: map[string]int{}}
}

// watch starts following pod devices as they come and go.
func (a *attachments) watch() {
	a.stop = make(chan struct{})
	a.watching.Go(func() { a.watchPods(a.stop, a.opts.OnError) })
}

func (a *attachments) close() error {
	if a.stop != nil {
		close(a.stop)
		a.watching.Wait()
		a.stop = nil
	}
	var errs []error
	for _, l := range a.links {
		errs = append(errs, l.Close())
	}
	a.links = nil
	return errors.Join(errs...)
}

// cgroup attaches the socket programs to the cgroup, adopting pinned links
// that are attached there and replacing their programs.
func (a *attachments) cgroup() error {
	var st syscall.Stat_t
	if err := syscall.Stat(a.opts.CgroupPath, &st); err != nil {
		return fmt.Errorf("cgroup %s: %w", a.opts.CgroupPath, err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(a.opts.CgroupPath, &fs); err != nil || fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("%s is not a cgroup v2 folder", a.opts.CgroupPath)
	}
	if err := os.MkdirAll(a.dir, 0o700); err != nil {
		return err
	}
	for _, h := range cgroupHooks {
		l, err := pinnedLink(filepath.Join(a.dir, cgroupPrefix+h.name), h.prog(a.objs),
			func(i *link.Info) bool { return i.Cgroup() != nil && i.Cgroup().CgroupId == st.Ino },
			func() (link.Link, error) {
				return link.AttachCgroup(link.CgroupOptions{Path: a.opts.CgroupPath, Attach: h.attach, Program: h.prog(a.objs)})
			})
		if err != nil {
			return fmt.Errorf("the %s program on %s: %w", h.name, a.opts.CgroupPath, err)
		}
		a.links = append(a.links, l)
	}
	return nil
}

// pinnedLink makes the link pinned at pin run prog and returns it, open.
// A pinned link that is where attach would put it (ours says so) gets the
// program atomically; else a new link is attached, and pinned in the old
// one's place, before the old one goes, so that nothing ever passes with
// no program.
func pinnedLink(pin string, prog *ebpf.Program, ours func(*link.Info) bool, attach func() (link.Link, error)) (link.Link, error) {
	old, err := link.LoadPinnedLink(pin, nil)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("loading pinned link %s: %w", pin, err)
	}
	if old != nil {
		if info, err := old.Info(); err == nil && ours(info) {
			if err := old.Update(prog); err != nil {
				old.Close()
				return nil, fmt.Errorf("replacing the program: %w", err)
			}
			return old, nil
		}
	}
	l, err := attach()
	if old != nil {
		if err == nil {
			old.Unpin()
		}
		old.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("attaching: %w", err)
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return nil, fmt.Errorf("pinning: %w", err)
	}
	return l, nil
}

// devices attaches the external devices' tc programs to exactly these
// devices: it adopts and updates what is attached to them and detaches
// from devices not named. A pod device named here becomes an external one.
func (a *attachments) devices(names []string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return netns.Do(a.opts.NetNS, func() error {
		want := map[string]int{}
		for _, n := range names {
			ifc, err := net.InterfaceByName(n)
			if err != nil {
				return fmt.Errorf("device %s: %w", n, err)
			}
			want[n] = ifc.Index
		}
		for name, idx := range want {
			if err := a.attachTC(external, name, idx); err != nil {
				return err
			}
			if _, ok := a.pods[name]; ok {
				unpinRole(a.dir, pod, name)
				delete(a.pods, name)
			}
		}
		if err := a.detach(external, want); err != nil {
			return err
		}
		if err := a.writeDevices(want); err != nil {
			return err
		}
		a.devs = want
		return nil
	})
}

// detach removes r's programs from every device not in keep. Run in the
// datapath's network namespace.
func (a *attachments) detach(r role, keep map[string]int) error {
	pins, _ := filepath.Glob(filepath.Join(a.dir, r.pin+"*"))
	for _, pin := range pins {
		if dev, ok := r.pinDevice(pin); ok {
			if _, kept := keep[dev]; !kept {
				unpinLink(pin)
			}
		}
	}
	links, err := linkList()
	if err != nil {
		return fmt.Errorf("listing devices: %w", err)
	}
	for _, l := range links {
		if _, kept := keep[l.Attrs().Name]; !kept {
			removeFilters(r, l.Attrs().Index)
		}
	}
	return nil
}

// attachTC attaches r's programs to a device with tcx links where the
// options allow and the kernel has them, else with clsact filters. Run in
// the datapath's network namespace.
func (a *attachments) attachTC(r role, name string, idx int) error {
	if a.opts.TC != TCClsact {
		err := a.attachTCX(r, name, idx)
		if err == nil {
			removeFilters(r, idx)
			return nil
		}
		if !errors.Is(err, ebpf.ErrNotSupported) || a.opts.TC == TCX {
			return err
		}
	}
	return a.attachClsact(r, name, idx)
}

func (a *attachments) attachTCX(r role, name string, idx int) error {
	for _, d := range r.directions {
		l, err := pinnedLink(filepath.Join(a.dir, r.pin+d.name+"_"+name), d.prog(a.objs),
			func(i *link.Info) bool { return i.TCX() != nil && int(i.TCX().Ifindex) == idx },
			func() (link.Link, error) {
				return link.AttachTCX(link.TCXOptions{Interface: idx, Program: d.prog(a.objs), Attach: d.tcx, Anchor: link.Head()})
			})
		if err != nil {
			return fmt.Errorf("tc %s on %s: %w", d.name, name, err)
		}
		l.Close()
	}
	return nil
}

func (a *attachments) attachClsact(r role, name string, idx int) error {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding the clsact qdisc to %s: %w", name, err)
	}
	for _, d := range r.directions {
		f := &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{
				LinkIndex: idx,
				Parent:    d.parent,
				Handle:    filterHandle,
				Protocol:  unix.ETH_P_ALL,
				Priority:  filterPriority,
			},
			Fd:           d.prog(a.objs).FD(),
			Name:         r.filter + d.name,
			DirectAction: true,
		}
		// Replacing a filter of the same handle and priority is atomic.
		if err := netlink.FilterReplace(f); err != nil {
			return fmt.Errorf("attaching the tc %s filter to %s: %w", d.name, name, err)
		}
	}
	return nil
}

// writeDevices records which interfaces are the node's external devices,
// for the tc program's remote-backend test.
func (a *attachments) writeDevices(want map[string]int) error {
	have, err := readAll[uint32, uint32](a.objs.Devices)
	if err != nil {
		return err
	}
	next := map[uint32]uint32{}
	for _, idx := range want {
		next[uint32(idx)] = 1
	}
	c := newChange[uint32, uint32]()
	c.add(have, next)
	if err := putAll(a.objs.Devices, c.put); err != nil {
		return err
	}
	return deleteAll(a.objs.Devices, c.deleted())
}

// removeFilters removes r's clsact filters from a device.
func removeFilters(r role, idx int) {
	l, err := netlink.LinkByIndex(idx)
	if err != nil {
		return
	}
	for _, d := range r.directions {
		filters, err := netlink.FilterList(l, d.parent)
		if err != nil {
			continue
		}
		for _, f := range filters {
			if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, r.filter) {
				netlink.FilterDel(f)
			}
		}
	}
}

// unpinRole removes the pins of r's tcx links on a device.
func unpinRole(dir string, r role, dev string) {
	for _, d := range r.directions {
		unpinLink(filepath.Join(dir, r.pin+d.name+"_"+dev))
	}
}

// unpinLink removes a link's pin, which detaches it once nothing else
// holds it.
func unpinLink(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		// Not a link we can load: drop the pin itself.
		return os.Remove(pin)
	}
	defer l.Close()
	return l.Unpin()
}
