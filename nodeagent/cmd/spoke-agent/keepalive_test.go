package main

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc/keepalive"
)

// TestKeepaliveFlags: a keepalive Time below what the control plane
// permits (it would answer GOAWAY too_many_pings) or no timeout is refused
// at start; the shortest permitted Time is taken.
func TestKeepaliveFlags(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tc := range []struct {
		ka keepalive.ClientParameters
		ok bool
	}{
		{keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}, true},
		{keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 2 * time.Second}, true},
		{keepalive.ClientParameters{Time: 5 * time.Second, Timeout: 2 * time.Second}, false},
		{keepalive.ClientParameters{Time: 10 * time.Second}, false},
	} {
		_, err := config{insecure: true, keepalive: tc.ka}.transport(log)
		if (err == nil) != tc.ok {
			t.Errorf("-keepalive-time %v -keepalive-timeout %v: %v, want ok %v", tc.ka.Time, tc.ka.Timeout, err, tc.ok)
		}
	}
}
