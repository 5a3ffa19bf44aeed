package tracker

import (
	"sync"
	"sync/atomic"
	"time"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
	"github.com/spoke-proxy/spoke/scale-sim/cluster"
)

// Class sorts nodes for separate figures.
type Class int

// Node classes.
const (
	Healthy Class = iota
	Slow
	numClasses
)

// MaxPhases is the number of phases a run may record separately.
const MaxPhases = 4

// Change is one change made at the API.
type Change struct {
	at    atomic.Int64 // unix nanoseconds; set just before the change is sent
	phase int
}

// Sent records the moment the change is handed to the API.
func (c *Change) Sent(t time.Time) { c.at.Store(t.UnixNano()) }

type pending struct {
	version string
	change  *Change
}

// pendingList are the changes of one service a node has yet to apply.
type pendingList struct {
	// base is the version the node held when the first of them was made,
	// or "" if the node did not hold the expected version then.
	base  string
	items []pending
}

type node struct {
	mu      sync.Mutex
	class   Class
	pending map[int32]*pendingList
	ok      []uint64 // bit per service: the node holds the expected version
	// Counters since the last Reset, for the scenario that reads them.
	responses, resources uint64
	firstResponse        time.Time
}

// Tracker matches what each node's datapath applies with the changes made
// at the API, and records the propagation latency of every (node, change)
// pair. It is safe for concurrent use.
type Tracker struct {
	c     *cluster.Cluster
	start time.Time
	nodes []node
	okN   atomic.Int64

	phase atomic.Int32

	mu        sync.Mutex
	hist      [MaxPhases][numClasses]Histogram
	perSecond []Histogram // every phase and class, by second since start
	unmatched uint64
	changes   [MaxPhases]uint64
}

// New returns a tracker of c's nodes and services; the versions of the
// services' views must be set in c.
func New(c *cluster.Cluster) *Tracker {
	t := &Tracker{c: c, start: time.Now(), nodes: make([]node, len(c.Nodes))}
	words := (len(c.Services) + 63) / 64
	for i := range t.nodes {
		t.nodes[i].pending = map[int32]*pendingList{}
		t.nodes[i].ok = make([]uint64, words)
	}
	return t
}

// SetClass sets a node's class.
func (t *Tracker) SetClass(n int, cl Class) {
	t.nodes[n].mu.Lock()
	t.nodes[n].class = cl
	t.nodes[n].mu.Unlock()
}

// SetPhase makes changes made from now on count in phase p.
func (t *Tracker) SetPhase(p int) { t.phase.Store(int32(p)) }

// Converged reports how many (node, service) pairs hold the expected
// version, and how many there are.
func (t *Tracker) Converged() (ok, total int64) {
	return t.okN.Load(), int64(len(t.nodes)) * int64(len(t.c.Services))
}

// NewChange returns a change of service i from the views old to new and
// marks it pending on every node whose view differs. The caller holds the
// service's lock, sets the new views, then calls Sent and makes the change.
func (t *Tracker) NewChange(i int, old, new *cluster.Versions) *Change {
	ch := &Change{phase: int(t.phase.Load())}
	t.mu.Lock()
	t.changes[ch.phase]++
	t.mu.Unlock()
	// mark makes the change pending on node n, whose view goes from the
	// version from to the version to. A change back to the version the
	// node held before every pending one ends them all: the control plane
	// coalesces them, and the node, already holding the result, receives
	// nothing.
	mark := func(n int, from, to string) {
		nd := &t.nodes[n]
		nd.mu.Lock()
		defer nd.mu.Unlock()
		pl := nd.pending[int32(i)]
		if pl == nil {
			pl = &pendingList{}
			if t.isOK(nd, i) {
				pl.base = from
			}
			nd.pending[int32(i)] = pl
		}
		if pl.base != "" && to == pl.base {
			delete(nd.pending, int32(i))
			t.setOK(nd, i, true)
			return
		}
		pl.items = append(pl.items, pending{version: to, change: ch})
		t.setOK(nd, i, false)
	}
	own := func(name string) bool {
		_, a := old.ByNode[name]
		_, b := new.ByNode[name]
		return a || b
	}
	for zone, members := range t.c.NodesByZone {
		oldV, newV := zoneVersion(old, zone), zoneVersion(new, zone)
		if oldV == newV {
			continue
		}
		for _, n := range members {
			if !own(t.c.Nodes[n].Name) {
				mark(n, oldV, newV)
			}
		}
	}
	for k, m := range []map[string]string{old.ByNode, new.ByNode} {
		for name := range m {
			n := t.c.NodeIndex(name)
			if n < 0 {
				continue
			}
			if _, seen := old.ByNode[name]; k == 1 && seen {
				continue
			}
			zone := t.c.Zone[n]
			if o, v := old.For(name, zone), new.For(name, zone); o != v {
				mark(n, o, v)
			}
		}
	}
	return ch
}

func zoneVersion(v *cluster.Versions, zone string) string {
	if s, ok := v.ByZone[zone]; ok {
		return s
	}
	return v.Default
}

func (t *Tracker) isOK(nd *node, i int) bool {
	return nd.ok[i/64]&(uint64(1)<<(i%64)) != 0
}

func (t *Tracker) setOK(nd *node, i int, ok bool) {
	w, bit := i/64, uint64(1)<<(i%64)
	was := nd.ok[w]&bit != 0
	switch {
	case ok && !was:
		nd.ok[w] |= bit
		t.okN.Add(1)
	case !ok && was:
		nd.ok[w] &^= bit
		t.okN.Add(-1)
	}
}

// Applied records what node n's datapath applied at time at: the agent's
// OnApplied hook calls it.
func (t *Tracker) Applied(n int, at time.Time, applied []*spokev1.Resource, removed []string) {
	nd := &t.nodes[n]
	name, zone := t.c.Nodes[n].Name, t.c.Zone[n]
	var lat []time.Duration
	var phases []int
	unmatched := 0
	nd.mu.Lock()
	if nd.responses == 0 {
		nd.firstResponse = at
	}
	nd.responses++
	nd.resources += uint64(len(applied))
	handle := func(res string, version string) {
		i := cluster.ServiceIndex(res)
		if i < 0 || i >= len(t.c.Services) {
			return
		}
		last := -1
		var p []pending
		pl := nd.pending[int32(i)]
		if pl != nil {
			p = pl.items
		}
		for j := len(p) - 1; j >= 0; j-- {
			if p[j].version == version {
				last = j
				break
			}
		}
		if last < 0 && len(p) > 0 {
			unmatched++
		}
		for j := 0; j <= last; j++ {
			sent := p[j].change.at.Load()
			if sent == 0 {
				// Not sent yet: the node got this version for an
				// earlier change that made it too.
				continue
			}
			lat = append(lat, at.Sub(time.Unix(0, sent)))
			phases = append(phases, p[j].change.phase)
		}
		if last >= 0 {
			if last == len(p)-1 {
				delete(nd.pending, int32(i))
			} else {
				pl.items = append(p[:0:0], p[last+1:]...)
				pl.base = version
			}
		}
		t.setOK(nd, i, version == t.c.Views(i).For(name, zone))
	}
	for _, r := range applied {
		handle(r.GetName(), r.GetVersion())
	}
	for _, r := range removed {
		handle(r, "")
	}
	class := nd.class
	nd.mu.Unlock()
	if len(lat) == 0 && unmatched == 0 {
		return
	}
	sec := int(at.Sub(t.start) / time.Second)
	t.mu.Lock()
	t.unmatched += uint64(unmatched)
	for len(t.perSecond) <= sec {
		t.perSecond = append(t.perSecond, Histogram{})
	}
	for k, d := range lat {
		t.hist[phases[k]][class].Record(d)
		t.perSecond[sec].Record(d)
	}
	t.mu.Unlock()
}

// Result is a phase's figures for a set of classes.
type Result struct {
	Histogram Histogram
	Changes   uint64
}

// Phase returns the latencies recorded for changes made in phase p, at the
// nodes of the given classes (all when none given).
func (t *Tracker) Phase(p int, classes ...Class) Result {
	if len(classes) == 0 {
		classes = []Class{Healthy, Slow}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var r Result
	for _, c := range classes {
		r.Histogram.Merge(&t.hist[p][c])
	}
	r.Changes = t.changes[p]
	return r
}

// Unmatched returns how many applied versions matched no pending change
// (an older version still in flight, or a version the simulator did not
// expect).
func (t *Tracker) Unmatched() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.unmatched
}

// Pending returns how many (node, change) pairs are not applied yet.
func (t *Tracker) Pending() int {
	n := 0
	for i := range t.nodes {
		nd := &t.nodes[i]
		nd.mu.Lock()
		for _, pl := range nd.pending {
			n += len(pl.items)
		}
		nd.mu.Unlock()
	}
	return n
}

// Second is one second of the run's latencies.
type Second struct {
	Offset        time.Duration
	P50, P99, Max time.Duration
	Count         uint64
	Histogram     *Histogram
}

// Timeline returns per-second latency figures since the tracker started.
func (t *Tracker) Timeline() []Second {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Second
	for s := range t.perSecond {
		h := &t.perSecond[s]
		if h.Count() == 0 {
			continue
		}
		out = append(out, Second{Offset: time.Duration(s) * time.Second, P50: h.Quantile(0.5), P99: h.Quantile(0.99), Max: h.Max(), Count: h.Count(), Histogram: h})
	}
	return out
}

// Start returns when the tracker started.
func (t *Tracker) Start() time.Time { return t.start }

// Activity is what a node handled since ResetActivity.
type Activity struct {
	Responses, Resources uint64
	FirstResponse        time.Time
}

// ResetActivity clears every node's activity counters.
func (t *Tracker) ResetActivity() {
	for i := range t.nodes {
		nd := &t.nodes[i]
		nd.mu.Lock()
		nd.responses, nd.resources, nd.firstResponse = 0, 0, time.Time{}
		nd.mu.Unlock()
	}
}

// Activity returns node n's activity since ResetActivity.
func (t *Tracker) Activity(n int) Activity {
	nd := &t.nodes[n]
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return Activity{Responses: nd.responses, Resources: nd.resources, FirstResponse: nd.firstResponse}
}
