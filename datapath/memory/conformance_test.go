package memory_test

import (
	"context"
	"testing"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/datapath/conformance"
	"github.com/spoke-proxy/spoke/datapath/memory"
)

type target struct{ *memory.Datapath }

func (t target) Trace(_ context.Context, origin datapath.Origin, pkt datapath.Packet) (datapath.Verdict, error) {
	return t.Datapath.Trace(origin, pkt), nil
}

func TestConformance(t *testing.T) {
	conformance.Run(t, func(*testing.T) conformance.Target {
		return target{memory.New(memory.Options{})}
	})
}
