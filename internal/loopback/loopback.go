// Package loopback finds loopback TCP addresses nothing listens on, for
// tests that hand a server its address before it starts (a flag of a
// process, an address to restart on).
package loopback

import (
	"net"
	"testing"
)

// FreeAddr returns an address on 127.0.0.1 ("127.0.0.1:port") that
// nothing listens on: the kernel picks the port, which is free again when
// FreeAddr returns. Another program may take it before the caller does.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return free(t).String()
}

// FreePort returns the port of an address FreeAddr would return.
func FreePort(t testing.TB) uint16 {
	t.Helper()
	return uint16(free(t).Port)
}

func free(t testing.TB) *net.TCPAddr {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().(*net.TCPAddr)
}
