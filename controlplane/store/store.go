package store

import (
	"bytes"
	"container/list"
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spoke-proxy/spoke/controlplane/model"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// Encoded is one resource encoded once and shared by every stream that
// sends it.
type Encoded struct {
	Name    string
	Version string
	// Rev is the store revision at which this content appeared.
	Rev uint64
	// Bytes is the wire encoding of the spokev1.Resource.
	Bytes []byte
	// Framed is Bytes as a resources entry of a
	// StreamViewsResponse: tag, length, Bytes. Bytes is its tail, so a
	// response is a list of shared slices, copied into no per-stream buffer.
	Framed []byte
	// Resource is the decoded form, for inspection. Never modify it.
	Resource *spokev1.Resource
	// Trigger is the EndpointSlice last-change-trigger-time of the change
	// that produced this content (model.Views.Trigger), zero when unknown.
	// A node that acknowledges this content has programmed that change.
	Trigger time.Time
}

func encode(r *spokev1.Resource, rev uint64) (*Encoded, error) {
	f, err := spokev1.FrameResource(r)
	if err != nil {
		return nil, err
	}
	return &Encoded{Name: r.Name, Version: f.Version, Rev: rev, Bytes: f.Encoded, Framed: f.Framed, Resource: r}, nil
}

// scope is a group of nodes a service view applies to.
type scope struct {
	kind byte // 'd' default, 'z' zone, 'n' node
	name string
}

type serviceEntry struct {
	name   string
	rev    uint64
	def    *Encoded
	byZone map[string]*Encoded
	byNode map[string]*Encoded
	// selRev records, per scope, the revision at which a view for that
	// scope appeared or disappeared: nodes in it may now see another view.
	selRev map[scope]uint64
	elem   *list.Element
}

func (e *serviceEntry) tombstone() bool {
	return e.def == nil && len(e.byZone) == 0 && len(e.byNode) == 0
}

func (e *serviceEntry) viewFor(node, zone string) *Encoded {
	if v, ok := e.byNode[node]; ok {
		return v
	}
	if v, ok := e.byZone[zone]; ok {
		return v
	}
	return e.def
}

func (e *serviceEntry) selectionRev(node, zone string) uint64 {
	return max(e.selRev[scope{'d', ""}], e.selRev[scope{'z', zone}], e.selRev[scope{'n', node}])
}

type nodeEntry struct {
	enc     *Encoded
	zone    string
	zoneRev uint64
	// prevZone is the zone before the last change (the node unknown
	// counts as zone ""), from prevZoneRev until zoneRev.
	prevZone    string
	prevZoneRev uint64
}

// Store is the set of encoded views, safe for concurrent use.
type Store struct {
	mu       sync.RWMutex
	rev      uint64
	services map[string]*serviceEntry
	// sorted holds the entries on the log by name, for digests of views.
	sorted     []*serviceEntry
	unsorted   bool
	log        *list.List // of *serviceEntry, by rev ascending
	tombstones int
	nodes      map[string]*nodeEntry
	subs       map[*Subscription]struct{}
	ready      chan struct{}
	readyOnce  sync.Once
	limits     limits
	// apiRev is how far the applied batches had followed the API, per
	// kind, and apiRevField that as a response field, encoded once for
	// every stream; advanced is closed and replaced whenever it moves.
	apiRev      *spokev1.ApiRevisions
	apiRevField []byte
	advanced    chan struct{}
}

// New returns an empty store that is not ready, with default options.
func New() *Store { return NewWithOptions(Options{}) }

// NewWithOptions returns an empty store that is not ready.
func NewWithOptions(opts Options) *Store {
	return &Store{
		services: make(map[string]*serviceEntry),
		log:      list.New(),
		nodes:    make(map[string]*nodeEntry),
		subs:     make(map[*Subscription]struct{}),
		ready:    make(chan struct{}),
		limits:   newLimits(opts),
		advanced: make(chan struct{}),
	}
}

// Batch is a set of changes published under one revision.
type Batch struct {
	// Services maps service names ("namespace/name") to their views; empty
	// views remove the service.
	Services map[string]*model.Views
	// Nodes maps node names to their node view; nil removes the node.
	Nodes map[string]*spokev1.Node
	// APIRevisions are how far the watches had followed the API when the
	// batch was computed; the store keeps the highest of each kind.
	APIRevisions *spokev1.ApiRevisions
}

// Apply publishes a batch under a new revision, wakes every subscriber if
// anything changed, and returns the revision.
func (s *Store) Apply(b Batch) (uint64, error) {
	s.mu.Lock()
	rev := s.rev + 1
	changed := false
	for name, views := range b.Services {
		c, err := s.setService(name, views, rev)
		if err != nil {
			s.mu.Unlock()
			return 0, err
		}
		changed = changed || c
	}
	for name, n := range b.Nodes {
		c, err := s.setNode(name, n, rev)
		if err != nil {
			s.mu.Unlock()
			return 0, err
		}
		changed = changed || c
	}
	if changed {
		s.rev = rev
		s.collectTombstones()
	}
	if s.unsorted {
		slices.SortFunc(s.sorted, byEntryName)
		s.unsorted = false
	}
	if b.APIRevisions != nil && !s.apiRev.AtLeast(b.APIRevisions) {
		s.apiRev = &spokev1.ApiRevisions{
			Services:       max(s.apiRev.GetServices(), b.APIRevisions.GetServices()),
			EndpointSlices: max(s.apiRev.GetEndpointSlices(), b.APIRevisions.GetEndpointSlices()),
			Nodes:          max(s.apiRev.GetNodes(), b.APIRevisions.GetNodes()),
		}
		s.apiRevField = spokev1.AppendResponseRevisions(nil, s.apiRev)
		close(s.advanced)
		s.advanced = make(chan struct{})
	}
	subs := make([]*Subscription, 0, len(s.subs))
	if changed {
		for sub := range s.subs {
			subs = append(subs, sub)
		}
	}
	s.mu.Unlock()
	for _, sub := range subs {
		sub.notify()
	}
	return rev, nil
}

// MarkReady makes the store serve views: call it once the first complete
// state has been applied.
func (s *Store) MarkReady() { s.readyOnce.Do(func() { close(s.ready) }) }

// Ready is closed once the store holds a complete state.
func (s *Store) Ready() <-chan struct{} { return s.ready }

// Revision returns the current revision.
func (s *Store) Revision() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.rev
}

// APIRevisions returns how far the applied batches had followed the API;
// nil before the first that said. The value is never modified.
func (s *Store) APIRevisions() *spokev1.ApiRevisions {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.apiRev
}

// WaitAPIRevisions waits until the store has reached rev in every kind, or
// ctx ends.
func (s *Store) WaitAPIRevisions(ctx context.Context, rev *spokev1.ApiRevisions) error {
	for {
		s.mu.RLock()
		cur, advanced := s.apiRev, s.advanced
		s.mu.RUnlock()
		if cur.AtLeast(rev) {
			return nil
		}
		select {
		case <-advanced:
		case <-ctx.Done():
			return fmt.Errorf("at API revisions {%v}, waiting for {%v}: %w", cur, rev, context.Cause(ctx))
		}
	}
}

func (s *Store) setService(name string, views *model.Views, rev uint64) (bool, error) {
	e := s.services[name]
	if e == nil {
		if views == nil || views.Empty() {
			s.limits.accept(name)
			return false, nil
		}
		e = &serviceEntry{name: name, selRev: map[scope]uint64{}}
		s.services[name] = e
	}
	wasTombstone := e.elem != nil && e.tombstone() // a new entry is not yet counted
	if views == nil {
		views = &model.Views{}
	}
	largest := 0 // framed size of the largest new view
	enc := func(old *Encoded, svc *spokev1.Service) (*Encoded, error) {
		if svc == nil {
			return nil, nil
		}
		n, err := encode(&spokev1.Resource{Name: name, Kind: &spokev1.Resource_Service{Service: svc}}, rev)
		if err != nil {
			return nil, err
		}
		if old != nil && old.Version == n.Version {
			return old, nil
		}
		n.Trigger = views.Trigger
		largest = max(largest, len(n.Framed))
		return n, nil
	}
	def, err := enc(e.def, views.Default)
	if err != nil {
		return false, err
	}
	changed := def != e.def
	if (def == nil) != (e.def == nil) {
		e.selRev[scope{'d', ""}] = rev
	}
	byZone := make(map[string]*Encoded, len(views.ByZone))
	for zone, svc := range views.ByZone {
		v, err := enc(e.byZone[zone], svc)
		if err != nil {
			return false, err
		}
		if def != nil && v.Version == def.Version {
			continue // same as the default: no group of its own
		}
		byZone[zone] = v
	}
	byNode := make(map[string]*Encoded, len(views.ByNode))
	for node, svc := range views.ByNode {
		v, err := enc(e.byNode[node], svc)
		if err != nil {
			return false, err
		}
		shared := def
		if z, ok := s.nodes[node]; ok {
			if zv, ok := byZone[z.zone]; ok {
				shared = zv
			}
		}
		if shared != nil && v.Version == shared.Version {
			continue
		}
		byNode[node] = v
	}
	if !s.limits.admit(name, largest) {
		if e.elem == nil {
			delete(s.services, name) // never published
		}
		return false, nil
	}
	changed = markSelection(e.selRev, 'z', e.byZone, byZone, rev) || changed
	changed = markSelection(e.selRev, 'n', e.byNode, byNode, rev) || changed
	changed = changed || !samePointers(e.byZone, byZone) || !samePointers(e.byNode, byNode)
	if !changed {
		return false, nil
	}
	e.def, e.byZone, e.byNode = def, byZone, byNode
	e.rev = rev
	if e.elem == nil {
		e.elem = s.log.PushBack(e)
		s.sorted, s.unsorted = append(s.sorted, e), true // sorted by Apply
	} else {
		s.log.MoveToBack(e.elem)
	}
	switch {
	case e.tombstone() && !wasTombstone:
		s.tombstones++
	case !e.tombstone() && wasTombstone:
		s.tombstones--
	}
	return true, nil
}

func samePointers(a, b map[string]*Encoded) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// markSelection records the scopes whose view appeared or disappeared.
func markSelection(sel map[scope]uint64, kind byte, before, after map[string]*Encoded, rev uint64) bool {
	changed := false
	for k := range before {
		if _, ok := after[k]; !ok {
			sel[scope{kind, k}] = rev
			changed = true
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			sel[scope{kind, k}] = rev
			changed = true
		}
	}
	return changed
}

func (s *Store) setNode(name string, n *spokev1.Node, rev uint64) (bool, error) {
	e := s.nodes[name]
	if n == nil {
		if e == nil || e.enc == nil {
			return false, nil
		}
		e.enc = nil
		return true, nil
	}
	enc, err := encode(&spokev1.Resource{Name: spokev1.NodeResourceName, Kind: &spokev1.Resource_Node{Node: n}}, rev)
	if err != nil {
		return false, err
	}
	if e == nil {
		s.nodes[name] = &nodeEntry{enc: enc, zone: n.Zone, zoneRev: rev}
		return true, nil
	}
	if e.enc != nil && e.enc.Version == enc.Version {
		return false, nil
	}
	if e.zone != n.Zone {
		e.prevZone, e.prevZoneRev = e.zone, e.zoneRev
		e.zone, e.zoneRev = n.Zone, rev
	}
	e.enc = enc
	return true, nil
}

// collectTombstones forgets deleted services every subscriber has
// synchronised past. A stream that connects later compares versions in full
// and needs no tombstone.
func (s *Store) collectTombstones() {
	if s.tombstones < 1024 {
		return
	}
	low := s.rev
	for sub := range s.subs {
		low = min(low, sub.synced.Load())
	}
	removed := false
	for el := s.log.Front(); el != nil; {
		e := el.Value.(*serviceEntry)
		if e.rev > low {
			break
		}
		next := el.Next()
		if e.tombstone() {
			s.log.Remove(el)
			delete(s.services, e.name)
			removed = true
			s.tombstones--
		}
		el = next
	}
	if removed {
		s.sorted = slices.DeleteFunc(s.sorted, func(e *serviceEntry) bool { return s.services[e.name] != e })
	}
}

// Subscription wakes a stream when the store changes.
type Subscription struct {
	c      chan struct{}
	synced atomic.Uint64
}

// C receives a value after each change; changes that arrive while one is
// pending are coalesced.
func (sub *Subscription) C() <-chan struct{} { return sub.c }

// SetSynced records the revision up to which the stream's agent holds its
// view, which keeps younger tombstones alive.
func (sub *Subscription) SetSynced(rev uint64) { sub.synced.Store(rev) }

func (sub *Subscription) notify() {
	select {
	case sub.c <- struct{}{}:
	default:
	}
}

// Subscribe registers a stream synchronised up to rev.
func (s *Store) Subscribe(rev uint64) *Subscription {
	sub := &Subscription{c: make(chan struct{}, 1)}
	sub.synced.Store(rev)
	s.mu.Lock()
	s.subs[sub] = struct{}{}
	s.mu.Unlock()
	return sub
}

// Unsubscribe removes a subscription.
func (s *Store) Unsubscribe(sub *Subscription) {
	s.mu.Lock()
	delete(s.subs, sub)
	s.mu.Unlock()
}

// Delta is what a node's agent lacks.
type Delta struct {
	// Rev is the revision the delta brings the agent to.
	Rev uint64
	// APIRevisions are the store's when the delta was computed, and
	// APIRevisionsField the same as a StreamViewsResponse field, shared.
	APIRevisions      *spokev1.ApiRevisions
	APIRevisionsField []byte
	Resources         []*Encoded
	Removed           []string
}

// Empty reports whether the delta carries nothing.
func (d *Delta) Empty() bool { return len(d.Resources) == 0 && len(d.Removed) == 0 }

// Initial compares the versions an agent holds with its node's view and
// returns what differs.
func (s *Store) Initial(node string, have map[string]string) Delta {
	s.mu.RLock()
	defer s.mu.RUnlock()
	d := Delta{Rev: s.rev, APIRevisions: s.apiRev, APIRevisionsField: s.apiRevField}
	zone := ""
	if n := s.nodes[node]; n != nil {
		zone = n.zone
		if n.enc != nil && have[spokev1.NodeResourceName] != n.enc.Version {
			d.Resources = append(d.Resources, n.enc)
		}
	}
	// seen counts the held names that are in the view: when it reaches
	// every held name, nothing is to be removed, and the held names need
	// no second pass (a reconnecting agent usually holds its view).
	seen := 0
	if _, ok := have[spokev1.NodeResourceName]; ok {
		seen++
	}
	for name, e := range s.services {
		v := e.viewFor(node, zone)
		if v == nil {
			continue
		}
		held, ok := have[name]
		if ok {
			seen++
		}
		if held != v.Version {
			d.Resources = append(d.Resources, v)
		}
	}
	if seen == len(have) {
		sortDelta(&d)
		return d
	}
	for name := range have {
		if name == spokev1.NodeResourceName {
			continue
		}
		if e := s.services[name]; e == nil || e.viewFor(node, zone) == nil {
			d.Removed = append(d.Removed, name)
		}
	}
	sortDelta(&d)
	return d
}

// InitialDigest is Initial for an agent that sent the
// spokev1.VersionsDigest of the versions it holds instead of the versions:
// when the digest of the node's view is equal, the agent holds its view and
// the delta is empty; ok is false otherwise, and the agent's versions are
// needed to tell what differs.
func (s *Store) InitialDigest(node string, digest []byte) (d Delta, ok bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	d = Delta{Rev: s.rev, APIRevisions: s.apiRev, APIRevisionsField: s.apiRevField}
	dg := spokev1.NewVersionsDigester()
	zone := ""
	if n := s.nodes[node]; n != nil {
		zone = n.zone
		if n.enc != nil {
			dg.Add(spokev1.NodeResourceName, n.enc.Version)
		}
	}
	for _, e := range s.sorted {
		if v := e.viewFor(node, zone); v != nil {
			dg.Add(e.name, v.Version)
		}
	}
	return d, bytes.Equal(dg.Sum(), digest)
}

func byEntryName(a, b *serviceEntry) int { return strings.Compare(a.name, b.name) }

// Since returns what changed for a node after revision synced. skip holds
// versions the agent rejected: those are not sent again. If the node's
// zone changed once after synced (or the node became known: its zone was
// ""), a service unchanged since is sent only when its view for the new
// zone differs from the one for the old; one that changed is sent. If the
// zone changed more than once, every service the node sees is sent.
func (s *Store) Since(node string, synced uint64, skip map[string]string) Delta {
	s.mu.RLock()
	defer s.mu.RUnlock()
	d := Delta{Rev: s.rev, APIRevisions: s.apiRev, APIRevisionsField: s.apiRevField}
	zone, oldZone, rezoned := "", "", false
	if n := s.nodes[node]; n != nil {
		zone = n.zone
		if n.enc != nil && n.enc.Rev > synced {
			d.Resources = append(d.Resources, n.enc)
		}
		switch {
		case n.zoneRev <= synced:
		case n.prevZoneRev <= synced:
			oldZone, rezoned = n.prevZone, true
		default:
			synced = 0
		}
	}
	for el := s.log.Back(); el != nil; el = el.Prev() {
		e := el.Value.(*serviceEntry)
		if e.rev <= synced {
			if !rezoned {
				break
			}
			// Unchanged since synced: the agent holds its view for the
			// old zone.
			v, old := e.viewFor(node, zone), e.viewFor(node, oldZone)
			switch {
			case v == nil && old != nil:
				d.Removed = append(d.Removed, e.name)
			case v == nil, skip[e.name] == v.Version:
			case old == nil || old.Version != v.Version:
				d.Resources = append(d.Resources, v)
			}
			continue
		}
		v := e.viewFor(node, zone)
		moved := rezoned || e.selectionRev(node, zone) > synced
		switch {
		case v == nil && moved:
			d.Removed = append(d.Removed, e.name)
		case v == nil:
		case skip[e.name] == v.Version:
		case v.Rev > synced || moved:
			d.Resources = append(d.Resources, v)
		}
	}
	sortDelta(&d)
	return d
}

// Rejected returns the services whose views are held back, by name.
func (s *Store) Rejected() []Rejection {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.limits.list()
}

// View returns a node's whole view, for inspection.
func (s *Store) View(node string) []*Encoded {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*Encoded
	zone := ""
	if n := s.nodes[node]; n != nil {
		zone = n.zone
		if n.enc != nil {
			out = append(out, n.enc)
		}
	}
	for _, e := range s.services {
		if v := e.viewFor(node, zone); v != nil {
			out = append(out, v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func sortDelta(d *Delta) {
	sort.Slice(d.Resources, func(i, j int) bool { return d.Resources[i].Name < d.Resources[j].Name })
	sort.Strings(d.Removed)
}
