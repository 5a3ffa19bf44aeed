// Package reconcile keeps a datapath equal to the agent's desired state:
// it applies changes as they come, isolates the services a datapath
// rejects as invalid, retries the ones that failed for a transient reason,
// and periodically reads the datapath back to repair drift (a service
// someone else changed or removed).
//
// Only an error that wraps datapath.ErrInvalid is the service's fault. Any
// other error (ENOMEM, a failed netlink call, a full table that frees
// later) leaves the service desired and the datapath marked dirty; the run
// loop retries it with backoff, without waiting for a new version.
//
// Repair reads the datapath back without holding up Apply (at 10,000
// services a read takes hundreds of milliseconds, and under churn an
// update would wait for it); what is applied during the read is left to the
// next Repair.
//
// Repair removes services the desired state does not name only after
// MarkSynced: before the agent's first sync with the control plane the
// desired state may be incomplete (a lost state file), and emptying the
// datapath then would be the opposite of static stability.
package reconcile

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/spoke-proxy/spoke/datapath"
)

// Reconciler drives one datapath. It is safe for concurrent use.
type Reconciler struct {
	dp   datapath.Datapath
	kick chan struct{} // a failed write asks the run loop for a sooner retry
	// repairMu lets one Repair run at a time; it is taken before mu.
	repairMu sync.Mutex

	mu        sync.Mutex
	node      *datapath.Node
	desired   map[string]*datapath.Service
	lastDrift []string
	dirty     bool // a failed write left the datapath behind the desired state
	synced    bool // the desired state is complete: repair may remove
	// touched, while Repair reads the datapath back without mu, collects
	// the keys applied meanwhile: what was read of them may predate the
	// apply, so that Repair leaves them to the next one.
	touched map[string]bool
}

// New returns a Reconciler with an empty desired state.
func New(dp datapath.Datapath) *Reconciler {
	return &Reconciler{dp: dp, desired: map[string]*datapath.Service{}, kick: make(chan struct{}, 1)}
}

// Datapath returns the datapath the reconciler drives.
func (r *Reconciler) Datapath() datapath.Datapath { return r.dp }

// MarkSynced records that the desired state is complete (the agent has
// synced with the control plane): from now on Repair removes services it
// does not name.
func (r *Reconciler) MarkSynced() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.synced = true
}

// Apply adds the upserted services to the desired state, removes the named
// ones, and programs the datapath. A service the datapath rejects as
// invalid keeps its previous desired state and is returned in failed with
// its error. A service that fails for another reason is desired all the
// same and retried by Run. err is set when the node is invalid.
func (r *Reconciler) Apply(ctx context.Context, node *datapath.Node, upsert []*datapath.Service, remove []string) (failed map[string]error, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.setNode(ctx, node); err != nil {
		return nil, err
	}
	if len(upsert) == 0 && len(remove) == 0 {
		return nil, nil
	}
	if r.touched != nil {
		for _, s := range upsert {
			r.touched[s.Key] = true
		}
		for _, k := range remove {
			r.touched[k] = true
		}
	}
	failed = map[string]error{}
	if err := r.dp.Apply(ctx, upsert, remove); err != nil {
		failed = r.applyEach(ctx, upsert, remove)
	}
	for _, k := range remove {
		delete(r.desired, k)
	}
	for _, s := range upsert {
		if _, bad := failed[s.Key]; !bad {
			r.desired[s.Key] = s
		}
	}
	return failed, nil
}

// Adopt takes services the datapath already holds as the desired state,
// without programming them, and sets the node: a restarted agent whose
// datapath is stamped with its state file's stamp (datapath.Stamper)
// adopts the file's services. Repair verifies them. err is set when the
// node is invalid.
func (r *Reconciler) Adopt(ctx context.Context, node *datapath.Node, services []*datapath.Service) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.setNode(ctx, node); err != nil {
		return err
	}
	for _, s := range services {
		r.desired[s.Key] = s
	}
	return nil
}

// setNode sets the node unless it is nil. It fails only for an invalid
// node; any other failure marks the datapath dirty.
func (r *Reconciler) setNode(ctx context.Context, node *datapath.Node) error {
	if node == nil {
		return nil
	}
	if err := r.dp.SetNode(ctx, *node); errors.Is(err, datapath.ErrInvalid) {
		return fmt.Errorf("setting node: %w", err)
	} else if err != nil {
		r.markDirty()
	}
	n := *node
	r.node = &n
	return nil
}

// applyEach applies a batch that failed as a whole one service at a time,
// to find the services at fault. It returns the invalid ones; any other
// failure marks the datapath dirty.
func (r *Reconciler) applyEach(ctx context.Context, upsert []*datapath.Service, remove []string) (invalid map[string]error) {
	invalid = map[string]error{}
	if len(remove) > 0 {
		if err := r.dp.Apply(ctx, nil, remove); err != nil {
			r.markDirty()
		}
	}
	for _, s := range upsert {
		err := r.dp.Apply(ctx, []*datapath.Service{s}, nil)
		switch {
		case errors.Is(err, datapath.ErrInvalid):
			invalid[s.Key] = err
		case err != nil:
			r.markDirty()
		}
	}
	return invalid
}

// markDirty records that the datapath is behind and wakes the run loop.
func (r *Reconciler) markDirty() {
	r.dirty = true
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Dirty reports whether a failed write left the datapath behind the
// desired state, to be retried.
func (r *Reconciler) Dirty() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dirty
}

// Desired returns the keys of the desired services.
func (r *Reconciler) Desired() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Sorted(maps.Keys(r.desired))
}

// LastDrift returns what the last Repair found different, before repairing.
func (r *Reconciler) LastDrift() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.lastDrift)
}

// Repair reads the datapath back and programs what differs from the
// desired state. It returns the differences it found. Before MarkSynced a
// service the desired state does not name is reported and kept. Apply is
// not held up while the datapath is read back (hundreds of milliseconds at
// 10,000 services); the services it applies meanwhile are left to the next
// Repair.
func (r *Reconciler) Repair(ctx context.Context) ([]string, error) {
	r.repairMu.Lock()
	defer r.repairMu.Unlock()
	r.mu.Lock()
	r.touched = map[string]bool{}
	r.mu.Unlock()
	actual, err := r.dp.Programmed(ctx)
	r.mu.Lock()
	defer r.mu.Unlock()
	touched := r.touched
	r.touched = nil
	if err != nil {
		return nil, fmt.Errorf("reading back the datapath: %w", err)
	}
	drift, upsert, remove := r.diff(actual, touched)
	r.lastDrift = drift
	if r.node != nil {
		if err := r.dp.SetNode(ctx, *r.node); err != nil {
			return drift, fmt.Errorf("setting node: %w", err)
		}
	}
	r.dirty = false
	if len(upsert) == 0 && len(remove) == 0 {
		return drift, nil
	}
	if err := r.dp.Apply(ctx, upsert, remove); err != nil {
		invalid := r.applyEach(ctx, upsert, remove)
		if r.dirty || len(invalid) > 0 {
			return drift, fmt.Errorf("repairing %d services: %w", len(upsert)+len(remove), err)
		}
	}
	return drift, nil
}

// diff compares the datapath with the desired state, but for the skipped
// keys.
func (r *Reconciler) diff(actual map[string]*datapath.Service, skip map[string]bool) (drift []string, upsert []*datapath.Service, remove []string) {
	for k, want := range r.desired {
		if skip[k] {
			continue
		}
		got, ok := actual[k]
		switch {
		case !ok:
			drift = append(drift, "missing "+k)
			upsert = append(upsert, want)
		case !datapath.Equal(got, want):
			drift = append(drift, "changed "+k)
			upsert = append(upsert, want)
		}
	}
	for k := range actual {
		if _, ok := r.desired[k]; ok || skip[k] {
			continue
		}
		if !r.synced {
			drift = append(drift, "unexpected "+k+" (kept until the first sync)")
			continue
		}
		drift = append(drift, "unexpected "+k)
		remove = append(remove, k)
	}
	slices.Sort(drift)
	return drift, upsert, remove
}

// Run repairs drift every interval, and sooner, with backoff, after a
// failed repair or a failed apply. It returns when ctx is done.
func (r *Reconciler) Run(ctx context.Context, interval time.Duration, onRepair func(drift []string, err error)) {
	const minRetry, maxRetry = 100 * time.Millisecond, 30 * time.Second
	retry := minRetry
	timer := time.NewTimer(interval)
	defer timer.Stop()
	next := time.Now().Add(interval)
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
			// A write failed: retry soon, unless a repair is due sooner.
			if time.Until(next) > retry {
				timer.Reset(retry)
				next = time.Now().Add(retry)
			}
			continue
		case <-timer.C:
		}
		drift, err := r.Repair(ctx)
		if onRepair != nil {
			onRepair(drift, err)
		}
		wait := interval
		if err != nil || r.Dirty() {
			wait = retry
			retry = min(2*retry, maxRetry)
		} else {
			retry = minRetry
		}
		timer.Reset(wait)
		next = time.Now().Add(wait)
	}
}
