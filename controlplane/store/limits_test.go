package store

import (
	"fmt"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/spoke-proxy/spoke/controlplane/model"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// wide is a view with n endpoints: about 10 bytes each when encoded.
func wide(name string, n int) *spokev1.Service {
	eps := make([]string, n)
	for i := range eps {
		eps[i] = fmt.Sprintf("10.1.%d.%d", i/256, i%256)
	}
	return view(name, eps...)
}

func names(rs []*Encoded) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Name)
	}
	return out
}

func TestOversizedViewsAreHeldBack(t *testing.T) {
	const limit = 512
	reg := prometheus.NewRegistry()
	s := NewWithOptions(Options{MaxViewBytes: limit, Registerer: reg})
	rejectedTotal := func() float64 {
		t.Helper()
		return testutil.ToFloat64(s.limits.total.WithLabelValues("too_large"))
	}
	apply(t, s, nodes(map[string]string{"n1": "a"}))

	// A new service over the limit is never published; others flow.
	rev := apply(t, s, Batch{Services: map[string]*model.Views{
		"ns/web": {Default: view("web", "10.0.0.1")},
		"ns/big": {Default: wide("big", 200)},
	}})
	if got := names(s.Initial("n1", nil).Resources); !slices.Equal(got, []string{spokev1.NodeResourceName, "ns/web"}) {
		t.Errorf("initial view with ns/big over the limit: %v, want the node and ns/web", got)
	}
	if got := s.Rejected(); len(got) != 1 || got[0].Name != "ns/big" || got[0].Bytes <= limit || got[0].Limit != limit {
		t.Errorf("rejected: %+v, want ns/big above %d", got, limit)
	}
	if got := rejectedTotal(); got != 1 {
		t.Errorf("views_rejected_total = %v, want 1", got)
	}
	if got := testutil.ToFloat64(s.limits.bytes.WithLabelValues("ns/big")); got <= limit {
		t.Errorf(`held_back_view_bytes{service="ns/big"} = %v, want its size above %d`, got, limit)
	}
	// The same oversized content again is not counted again.
	apply(t, s, Batch{Services: map[string]*model.Views{"ns/big": {Default: wide("big", 200)}}})
	if got := rejectedTotal(); got != 1 {
		t.Errorf("views_rejected_total after the same content = %v, want 1", got)
	}

	// A published service that grows over the limit is held back at its
	// last version, while a change to another service in the same batch
	// is published.
	webV1 := s.Initial("n1", nil).Resources[1]
	rev2 := apply(t, s, Batch{Services: map[string]*model.Views{
		"ns/web":   {Default: wide("web", 200)},
		"ns/other": {Default: view("other", "10.0.0.2")},
	}})
	if d := s.Since("n1", rev, nil); !slices.Equal(names(d.Resources), []string{"ns/other"}) || len(d.Removed) != 0 {
		t.Errorf("delta after ns/web grew over the limit: %s, want ns/other only", deltaNames(d))
	}
	if v := s.View("n1"); !slices.Contains(v, webV1) {
		t.Errorf("n1's view lost ns/web's last version: %v", names(v))
	}
	if got := s.Rejected(); len(got) != 2 || testutil.ToFloat64(s.limits.current) != 2 || rejectedTotal() != 2 {
		t.Errorf("rejected: %+v, gauge %v, total %v; want ns/big and ns/web, 2, 2", got, testutil.ToFloat64(s.limits.current), rejectedTotal())
	}

	// Shrinking back under the limit publishes it again; deleting a held
	// back service forgets its rejection.
	apply(t, s, Batch{Services: map[string]*model.Views{
		"ns/big": {Default: view("big", "10.0.0.3")},
		"ns/web": nil,
	}})
	d := s.Since("n1", rev2, nil)
	if !slices.Equal(names(d.Resources), []string{"ns/big"}) || !slices.Equal(d.Removed, []string{"ns/web"}) {
		t.Errorf("delta after ns/big shrank and ns/web was deleted: %s, want ns/big sent and ns/web removed", deltaNames(d))
	}
	if got := s.Rejected(); len(got) != 0 || testutil.ToFloat64(s.limits.current) != 0 {
		t.Errorf("rejected after shrinking and deleting: %+v, gauge %v; want none", got, testutil.ToFloat64(s.limits.current))
	}
	if n, err := testutil.GatherAndCount(reg, "spoke_controlplane_views_rejected_total"); err != nil || n != 1 {
		t.Errorf("registered spoke_controlplane_views_rejected_total series: %d, %v", n, err)
	}
	if n, err := testutil.GatherAndCount(reg, "spoke_controlplane_held_back_view_bytes"); err != nil || n != 0 {
		t.Errorf("held_back_view_bytes series once nothing is held back: %d, %v; want 0", n, err)
	}
}

func TestDefaultViewLimitFitsTheAgent(t *testing.T) {
	s := New()
	if s.limits.maxView+spokev1.ResponseOverheadBytes > spokev1.MaxMessageBytes {
		t.Errorf("view limit %d plus overhead %d exceeds the agent's receive limit %d",
			s.limits.maxView, spokev1.ResponseOverheadBytes, spokev1.MaxMessageBytes)
	}
	if s := NewWithOptions(Options{MaxViewBytes: 1 << 30}); s.limits.maxView != spokev1.MaxViewBytes {
		t.Errorf("a limit above spokev1.MaxViewBytes was kept: %d", s.limits.maxView)
	}
}
