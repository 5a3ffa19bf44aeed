package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/spoke-proxy/spoke/internal/cgroup"
	"github.com/spoke-proxy/spoke/internal/testnet"
)

// TestMain lets the test binary serve as the responder and probe, as the
// benchmark's own binary does.
func TestMain(m *testing.M) {
	if ok, err := subcommand(os.Args[1:]); ok {
		if err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestNodeBackends builds a node and checks that every endpoint address
// answers, with itself, through the responder behind the node.
func TestNodeBackends(t *testing.T) {
	testnet.RequireRoot(t)
	root, err := cgroup.Root()
	testnet.Require(t, err == nil, "a cgroup v2 mount")
	b := &bench{log: slog.Default(), id: newID(), dir: t.TempDir()}
	b.cgroupRoot = filepath.Join(root, b.id)
	if err := os.MkdirAll(b.cgroupRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.close(); err != nil {
			t.Error(err)
		}
	})
	n, err := b.newNode("n1", true)
	if err != nil {
		t.Fatal(err)
	}
	first, last := addrPort(endpoint(0, 0), responderPort), addrPort(endpoint(9999, 9), responderPort)
	res, err := b.runProbe(n, "-dst", first, "-direct", last, "-n", "3")
	if err != nil {
		t.Fatal(err)
	}
	if res.ServiceConnect <= 0 || res.DirectRTT < res.DirectConnect {
		t.Errorf("implausible times %+v", res)
	}
	if _, err := b.runProbe(n, "-wait", "-dst", "10.96.0.1:80", "-timeout", "300ms"); err == nil {
		t.Error("a ClusterIP nobody programmed answered")
	}
}
