package metric

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestNamesAndRegistration(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	f := New(reg, "agent")
	f.Counter("resources_received_total", "Resources.").Inc()
	f.GaugeVec("held", "Held.", "service").WithLabelValues("a").Set(1)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range families {
		names = append(names, mf.GetName())
	}
	if len(names) != 2 || names[0] != "spoke_agent_held" || names[1] != "spoke_agent_resources_received_total" {
		t.Errorf("registered %v", names)
	}
	// A nil registerer registers nothing and does not fail.
	New(nil, "agent").Counter("resources_received_total", "Resources.").Inc()
}
