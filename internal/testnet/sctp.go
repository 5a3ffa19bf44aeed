package testnet

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// SCTP sockets in the one-to-one style behave as TCP's do (listen, accept,
// connect, a byte stream), so once made with system calls they are handed
// to Go's poller as TCP listeners and connections: the net package makes a
// *net.TCPConn of any connected SOCK_STREAM socket of an IP family.

func sctpSocket(a netip.Addr) (int, error) {
	domain := unix.AF_INET
	if a.Is6() {
		domain = unix.AF_INET6
	}
	fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
	if err != nil {
		return -1, fmt.Errorf("SCTP socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// listenSCTP listens on addr in the calling thread's namespace.
func listenSCTP(addr netip.AddrPort) (net.Listener, error) {
	fd, err := sctpSocket(addr.Addr())
	if err != nil {
		return nil, err
	}
	if err := unix.Bind(fd, sockaddr(addr)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding SCTP %s: %w", addr, err)
	}
	if err := unix.Listen(fd, 64); err != nil {
		unix.Close(fd)
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "sctp-listener")
	defer f.Close()
	return net.FileListener(f)
}

// dialSCTP connects from src (any when invalid, or port 0) to dst, giving
// up after timeout, in the calling thread's namespace.
func dialSCTP(src, dst netip.AddrPort, timeout time.Duration) (*net.TCPConn, error) {
	fd, err := sctpSocket(dst.Addr())
	if err != nil {
		return nil, err
	}
	if src.IsValid() {
		if err := unix.Bind(fd, sockaddr(src)); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("binding SCTP %s: %w", src, err)
		}
	}
	// A blocking connect bounded by the send timeout.
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.Connect(fd, sockaddr(dst)); err != nil {
		unix.Close(fd)
		if err == unix.EINPROGRESS || err == unix.EAGAIN {
			err = unix.ETIMEDOUT
		}
		return nil, fmt.Errorf("connecting to SCTP %s: %w", dst, err)
	}
	f := os.NewFile(uintptr(fd), "sctp")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("SCTP socket became a %T", c)
	}
	return tc, nil
}
