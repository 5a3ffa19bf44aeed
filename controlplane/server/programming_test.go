package server

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/spoke-proxy/spoke/controlplane/store"
	"github.com/spoke-proxy/spoke/internal/metric"
)

func TestObserveProgrammedCountsLiveChangesOnly(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	h := newProgrammingLatency(metric.New(reg, "controlplane"))
	now := time.Unix(1_700_000_100, 0)
	observeProgrammed(h, []*store.Encoded{
		{Name: "ns/live", Rev: 11, Trigger: now.Add(-1500 * time.Millisecond)},
		{Name: "ns/no-trigger", Rev: 12},
		{Name: "ns/sent-on-connect", Rev: 10, Trigger: now.Add(-time.Hour)},
	}, 10, now)
	families, err := reg.Gather()
	if err != nil || len(families) != 1 {
		t.Fatalf("gathering: %v (%d families)", err, len(families))
	}
	if name := families[0].GetName(); name != "kubeproxy_network_programming_duration_seconds" {
		t.Errorf("metric named %s, want kube-proxy's name", name)
	}
	m := families[0].GetMetric()[0].GetHistogram()
	if got := m.GetSampleCount(); got != 1 {
		t.Fatalf("%d observations, want 1 (the change made while connected)", got)
	}
	if got := m.GetSampleSum(); got != 1.5 {
		t.Fatalf("observed %v s, want 1.5 s", got)
	}
}
