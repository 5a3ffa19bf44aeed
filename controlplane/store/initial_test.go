package store

import (
	"fmt"
	"maps"
	"slices"
	"testing"

	"github.com/spoke-proxy/spoke/controlplane/model"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// BenchmarkInitialHoldingItsView is a reconnecting agent that holds its
// whole view (1,000 services): what a restarted control plane computes for
// each of thousands of agents.
func BenchmarkInitialHoldingItsView(b *testing.B) {
	s := New()
	if _, err := s.Apply(nodes(map[string]string{"node-1": "a"})); err != nil {
		b.Fatal(err)
	}
	batch := Batch{Services: map[string]*model.Views{}}
	for i := range 1000 {
		batch.Services[fmt.Sprintf("ns/svc-%d", i)] = &model.Views{Default: view(fmt.Sprintf("svc-%d", i), "10.0.0.1", "10.0.0.2")}
	}
	if _, err := s.Apply(batch); err != nil {
		b.Fatal(err)
	}
	have := map[string]string{}
	for _, r := range s.Initial("node-1", nil).Resources {
		have[r.Name] = r.Version
	}
	for b.Loop() {
		if d := s.Initial("node-1", have); len(d.Resources)+len(d.Removed) > 0 {
			b.Fatalf("an agent holding its view is sent %d resources and %d removals", len(d.Resources), len(d.Removed))
		}
	}
}

// TestInitialSendsWhatDiffers: a reconnecting agent is sent the services
// whose held version differs or that it lacks, and told to remove what it
// holds beyond its view; an agent holding exactly its view is sent nothing.
func TestInitialSendsWhatDiffers(t *testing.T) {
	s := New()
	apply(t, s, nodes(map[string]string{"node-1": "a"}))
	apply(t, s, Batch{Services: map[string]*model.Views{
		"ns/a": {Default: view("a", "10.0.0.1")},
		"ns/b": {Default: view("b", "10.0.0.2")},
		"ns/c": {Default: view("c", "10.0.0.3")},
	}})
	current := map[string]string{}
	for _, r := range s.Initial("node-1", nil).Resources {
		current[r.Name] = r.Version
	}
	held := func(edit func(map[string]string)) map[string]string {
		h := maps.Clone(current)
		edit(h)
		return h
	}
	for _, c := range []struct {
		name          string
		have          map[string]string
		sent, removed []string
	}{
		{"its whole view", current, nil, nil},
		{"one stale, one missing", held(func(h map[string]string) { h["ns/b"] = "old"; delete(h, "ns/c") }), []string{"ns/b", "ns/c"}, nil},
		{"one beyond its view", held(func(h map[string]string) { h["ns/gone"] = "v" }), nil, []string{"ns/gone"}},
		{"one beyond, one missing: as many held names as in the view", held(func(h map[string]string) { h["ns/gone"] = "v"; delete(h, "ns/a") }), []string{"ns/a"}, []string{"ns/gone"}},
		{"nothing", nil, []string{spokev1.NodeResourceName, "ns/a", "ns/b", "ns/c"}, nil},
	} {
		d := s.Initial("node-1", c.have)
		var sent []string
		for _, r := range d.Resources {
			sent = append(sent, r.Name)
		}
		slices.Sort(sent)
		if !slices.Equal(sent, c.sent) || !slices.Equal(d.Removed, c.removed) {
			t.Errorf("%s: sent %v, removed %v; want %v, %v", c.name, sent, d.Removed, c.sent, c.removed)
		}
	}
}
