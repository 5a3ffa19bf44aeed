package store

import (
	"fmt"
	"maps"
	"slices"
	"testing"

	"github.com/spoke-proxy/spoke/controlplane/model"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// holdingItsView returns a store of 1,000 services and node-1's versions
// of them.
func holdingItsView(b *testing.B) (*Store, map[string]string) {
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
	return s, have
}

// BenchmarkInitialHoldingItsView is a reconnecting agent that holds its
// whole view (1,000 services): what a restarted control plane computes for
// each of thousands of agents.
func BenchmarkInitialHoldingItsView(b *testing.B) {
	s, have := holdingItsView(b)
	for b.Loop() {
		if d := s.Initial("node-1", have); len(d.Resources)+len(d.Removed) > 0 {
			b.Fatalf("an agent holding its view is sent %d resources and %d removals", len(d.Resources), len(d.Removed))
		}
	}
}

// BenchmarkInitialDigestHoldingItsView is BenchmarkInitialHoldingItsView
// for an agent that sends the digest of its versions.
func BenchmarkInitialDigestHoldingItsView(b *testing.B) {
	s, have := holdingItsView(b)
	digest := spokev1.VersionsDigest(have)
	for b.Loop() {
		if _, ok := s.InitialDigest("node-1", digest); !ok {
			b.Fatal("an agent holding its view: the digest differs")
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

// TestInitialDigestMatchesHeldView: the digest of exactly what a node's
// agent would hold after Initial (node resource, default, zone and
// node-specific views) matches; any other held set does not, and the
// store's order survives services created, deleted and collected.
func TestInitialDigestMatchesHeldView(t *testing.T) {
	s := New()
	apply(t, s, nodes(map[string]string{"node-1": "a", "node-2": "b"}))
	batch := Batch{Services: map[string]*model.Views{}}
	for i := range 50 {
		batch.Services[fmt.Sprintf("ns/svc-%02d", 49-i)] = &model.Views{Default: view(fmt.Sprintf("svc-%d", i), "10.0.0.1")}
	}
	batch.Services["ns/zoned"] = &model.Views{Default: view("zoned", "10.0.0.1", "10.0.0.2"), ByZone: map[string]*spokev1.Service{"a": view("zoned", "10.0.0.1")}}
	batch.Services["ns/local"] = &model.Views{ByNode: map[string]*spokev1.Service{"node-2": view("local", "10.0.0.9")}}
	apply(t, s, batch)
	held := func(node string) map[string]string {
		h := map[string]string{}
		for _, r := range s.Initial(node, nil).Resources {
			h[r.Name] = r.Version
		}
		return h
	}
	check := func(when string) {
		t.Helper()
		for _, node := range []string{"node-1", "node-2", "node-unknown"} {
			h := held(node)
			if d, ok := s.InitialDigest(node, spokev1.VersionsDigest(h)); !ok || !d.Empty() || d.Rev != s.Revision() {
				t.Errorf("%s: %s holding its view: digest matched %v, delta %s at %d (store at %d)", when, node, ok, deltaNames(d), d.Rev, s.Revision())
			}
			for name := range h {
				stale := maps.Clone(h)
				stale[name] = "stale"
				if _, ok := s.InitialDigest(node, spokev1.VersionsDigest(stale)); ok {
					t.Errorf("%s: %s holding a stale %s: the digest matched", when, node, name)
				}
				break
			}
			extra := maps.Clone(h)
			extra["ns/gone"] = "v"
			if _, ok := s.InitialDigest(node, spokev1.VersionsDigest(extra)); ok {
				t.Errorf("%s: %s holding a service beyond its view: the digest matched", when, node)
			}
		}
		if _, ok := s.InitialDigest("node-1", spokev1.VersionsDigest(held("node-2"))); ok {
			t.Errorf("%s: node-1 holding node-2's view: the digest matched", when)
		}
	}
	check("first state")

	// New services land between old ones; deleted ones leave tombstones,
	// collected past 1,024.
	more := Batch{Services: map[string]*model.Views{"ns/svc-25a": {Default: view("svc-25a", "10.0.0.3")}, "aa/first": {Default: view("first", "10.0.0.4")}}}
	for i := range 1100 {
		more.Services[fmt.Sprintf("tmp/svc-%d", i)] = &model.Views{Default: view("tmp", "10.0.0.5")}
	}
	apply(t, s, more)
	check("services added")
	gone := Batch{Services: map[string]*model.Views{"ns/svc-07": nil}}
	for i := range 1100 {
		gone.Services[fmt.Sprintf("tmp/svc-%d", i)] = nil
	}
	apply(t, s, gone)
	check("services deleted and collected")
	if len(s.sorted) != len(s.services) {
		t.Errorf("%d entries in name order, %d services", len(s.sorted), len(s.services))
	}
}
