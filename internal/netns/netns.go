package netns

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Dir is where named namespaces are kept, as iproute2 keeps them, so that
// `ip netns exec NAME` reaches them while they exist.
const Dir = "/run/netns"

// NS is a named network namespace held open by a bind mount.
type NS struct {
	name, path string
}

// New creates a network namespace named name under Dir.
func New(name string) (*NS, error) {
	if name == "" || filepath.Base(name) != name {
		return nil, fmt.Errorf("bad namespace name %q", name)
	}
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", Dir, err)
	}
	path := filepath.Join(Dir, name)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return nil, fmt.Errorf("creating namespace file: %w", err)
	}
	f.Close()
	err = onThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare: %w", err)
		}
		self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(self, path, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mounting %s: %w", path, err)
		}
		return nil
	})
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	return &NS{name: name, path: path}, nil
}

// Name returns the namespace's name.
func (n *NS) Name() string { return n.name }

// Path returns the file that holds the namespace.
func (n *NS) Path() string { return n.path }

// Do runs fn inside the namespace.
func (n *NS) Do(fn func() error) error { return Do(n.path, fn) }

// Close removes the namespace's name. The namespace itself goes away when
// nothing else (a process, a socket) holds it.
func (n *NS) Close() error { return Remove(n.path) }

// Remove removes the name of the namespace held at path, as Close does; a
// missing name is not an error.
func Remove(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmounting %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// RemoveAll removes what a lab named prefix left in the host namespace:
// the bridge, if any, and every namespace whose name starts with prefix-
// (their veths go with them).
func RemoveAll(bridge, prefix string) error {
	var errs []error
	if l, err := netlink.LinkByName(bridge); err == nil {
		errs = append(errs, netlink.LinkDel(l))
	}
	names, _ := filepath.Glob(filepath.Join(Dir, prefix+"-*"))
	for _, path := range names {
		errs = append(errs, Remove(path))
	}
	return errors.Join(errs...)
}

// Do runs fn with its goroutine's thread in the network namespace held by
// the file at path; with an empty path it just runs fn.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	target, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("opening network namespace: %w", err)
	}
	defer target.Close()
	return onThread(func() error {
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("entering network namespace %s: %w", path, err)
		}
		return fn()
	})
}

// onThread runs fn on a fresh locked thread and puts the thread back in
// the network namespace it started in. If that fails the thread stays
// locked and dies with the goroutine.
func onThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("returning to the original network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Handle opens a netlink handle for the given families (unix.NETLINK_ROUTE
// when none is given) in the network namespace held by the file at path;
// with an empty path, in the caller's namespace.
func Handle(path string, families ...int) (*netlink.Handle, error) {
	if len(families) == 0 {
		families = []int{unix.NETLINK_ROUTE}
	}
	if path == "" {
		return netlink.NewHandle(families...)
	}
	fd, err := vnetns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("opening network namespace %s: %w", path, err)
	}
	defer fd.Close()
	return netlink.NewHandleAt(fd, families...)
}

// DevicesHolding names, sorted, the interfaces of the network namespace
// held at path (the caller's with an empty path) that hold any of addrs.
func DevicesHolding(path string, addrs []netip.Addr) ([]string, error) {
	h, err := Handle(path)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	// A dump that addresses changed under (NLM_F_DUMP_INTR) may be
	// incomplete: read it again.
	all, err := h.AddrList(nil, unix.AF_UNSPEC)
	for try := 1; errors.Is(err, netlink.ErrDumpInterrupted) && try < 5; try++ {
		all, err = h.AddrList(nil, unix.AF_UNSPEC)
	}
	if err != nil {
		return nil, fmt.Errorf("listing addresses: %w", err)
	}
	var out []string
	for _, a := range all {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || !slices.Contains(addrs, ip.Unmap()) {
			continue
		}
		l, err := h.LinkByIndex(a.LinkIndex)
		if err != nil {
			return nil, err
		}
		out = append(out, l.Attrs().Name)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}
