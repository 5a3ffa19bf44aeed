package ebpf

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/spoke-proxy/spoke/internal/netns"
)

// Pod devices: the kernel runs no cgroup socket hook for SCTP, so SCTP from
// the node's pods to a service is balanced per packet by the tc programs of
// the pod role, on every device that matches Options.PodDevices. Devices
// come and go with pods: a watcher attaches to each as it appears.

// isPod reports whether the device is a pod device: it matches a pattern
// and is not an external device. Called with a.mu held.
func (a *attachments) isPod(name string) bool {
	if _, ext := a.devs[name]; ext {
		return false
	}
	for _, p := range a.opts.PodDevices {
		if ok, _ := filepath.Match(p, name); ok {
			return true
		}
	}
	return false
}

// syncPods attaches the pod programs to every pod device there is and
// detaches them from devices that are gone or no longer match.
func (a *attachments) syncPods() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return netns.Do(a.opts.NetNS, func() error {
		links, err := linkList()
		if err != nil {
			return fmt.Errorf("listing devices: %w", err)
		}
		want := map[string]int{}
		var errs []error
		for _, l := range links {
			name, idx := l.Attrs().Name, l.Attrs().Index
			if !a.isPod(name) {
				continue
			}
			if err := a.attachTC(pod, name, idx); err != nil {
				if !gone(err) {
					errs = append(errs, err)
				}
				continue
			}
			want[name] = idx
		}
		errs = append(errs, a.detach(pod, want))
		a.pods = want
		return errors.Join(errs...)
	})
}

// podLink follows one change of a device: a new or renamed pod device gets
// the pod programs, a deleted one loses its pins.
func (a *attachments) podLink(u netlink.LinkUpdate) error {
	name, idx := u.Attrs().Name, u.Attrs().Index
	a.mu.Lock()
	defer a.mu.Unlock()
	if u.Header.Type == unix.RTM_DELLINK {
		if a.pods[name] == idx {
			delete(a.pods, name)
			unpinRole(a.dir, pod, name)
		}
		return nil
	}
	renamed := false
	for n, i := range a.pods {
		if i == idx && n != name {
			delete(a.pods, n)
			unpinRole(a.dir, pod, n)
			renamed = true
		}
	}
	switch {
	case a.isPod(name) && a.pods[name] != idx:
		err := netns.Do(a.opts.NetNS, func() error { return a.attachTC(pod, name, idx) })
		if gone(err) {
			return nil // its deletion is on its way
		}
		if err != nil {
			return err
		}
		a.pods[name] = idx
	case renamed && !a.isPod(name):
		return netns.Do(a.opts.NetNS, func() error {
			removeFilters(pod, idx)
			return nil
		})
	}
	return nil
}

// linkList lists the devices of the calling thread's namespace. A dump that
// devices changed under (pods come and go) may be incomplete: it is read
// again.
func linkList() ([]netlink.Link, error) {
	links, err := netlink.LinkList()
	for try := 1; errors.Is(err, netlink.ErrDumpInterrupted) && try < 5; try++ {
		links, err = netlink.LinkList()
	}
	return links, err
}

// gone reports whether err says the device no longer exists: pods come
// and go, and a device may go before the watcher attaches to it.
func gone(err error) bool { return errors.Is(err, unix.ENODEV) }

// watchPods follows the namespace's devices until stop is closed,
// reporting what fails to onError. When the subscription breaks (the
// kernel drops notifications when the socket's buffer is full) it
// subscribes again and attaches to every pod device afresh.
func (a *attachments) watchPods(stop <-chan struct{}, onError func(error)) {
	for {
		a.followPods(stop, onError)
		select {
		case <-stop:
			return
		case <-time.After(time.Second):
		}
	}
}

func (a *attachments) followPods(stop <-chan struct{}, onError func(error)) {
	done := make(chan struct{})
	updates := make(chan netlink.LinkUpdate, 256)
	defer func() {
		close(done)
		// The subscription's reader may be blocked sending an update:
		// take what it sends until it closes the channel.
		go func() {
			for range updates {
			}
		}()
	}()
	opts := netlink.LinkSubscribeOptions{ErrorCallback: func(err error) {
		select {
		case <-done:
		default:
			onError(fmt.Errorf("following pod devices: %w", err))
		}
	}}
	if a.opts.NetNS != "" {
		h, err := vnetns.GetFromPath(a.opts.NetNS)
		if err != nil {
			onError(fmt.Errorf("following pod devices: %w", err))
			return
		}
		defer h.Close()
		opts.Namespace = &h
	}
	if err := netlink.LinkSubscribeWithOptions(updates, done, opts); err != nil {
		onError(fmt.Errorf("following pod devices: %w", err))
		return
	}
	// Devices that appeared before the subscription.
	if err := a.syncPods(); err != nil {
		onError(err)
	}
	for {
		select {
		case <-stop:
			return
		case u, ok := <-updates:
			if !ok {
				return
			}
			if err := a.podLink(u); err != nil {
				onError(err)
			}
		}
	}
}
