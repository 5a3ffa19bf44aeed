package main

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/spoke-proxy/spoke/datapath"
)

// A datapath opened in the background answers once open, and a failed
// open is the error of every call.
func TestOpenInBackground(t *testing.T) {
	ctx := context.Background()
	mem := (&datapathFlags{name: "memory"}).openInBackground(prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	if err := mem.wait(); err != nil {
		t.Fatal(err)
	}
	if err := mem.Stamp(ctx, []byte("s")); err != nil {
		t.Fatal(err)
	}
	if got, err := mem.Stamped(ctx); err != nil || string(got) != "s" {
		t.Errorf("stamped %q, %v; want s", got, err)
	}
	if err := mem.Apply(ctx, nil, []string{"ns/none"}); err != nil {
		t.Errorf("apply: %v", err)
	}
	if mem.Name() != "memory" {
		t.Errorf("name %q", mem.Name())
	}

	bad := &datapathFlags{name: "ebpf"}
	bad.ebpf.PinPath = "relative/pins"
	failed := bad.openInBackground(prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	calls := map[string]error{
		"wait":     failed.wait(),
		"set node": failed.SetNode(ctx, datapath.Node{Name: "n"}),
		"apply":    failed.Apply(ctx, nil, nil),
		"stamp":    failed.Stamp(ctx, nil),
	}
	_, calls["programmed"] = failed.Programmed(ctx)
	_, calls["stamped"] = failed.Stamped(ctx)
	for call, err := range calls {
		if err == nil || !strings.Contains(err.Error(), "opening the ebpf datapath") || errors.Is(err, errors.ErrUnsupported) {
			t.Errorf("%s on a datapath that failed to open: %v", call, err)
		}
	}
	if err := failed.Close(); err != nil {
		t.Errorf("closing a datapath that failed to open: %v", err)
	}
}
