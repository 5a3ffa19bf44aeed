// Package reconcile keeps a datapath equal to the agent's desired state:
// it applies changes as they come, isolates the services a datapath
// rejects, and periodically reads the datapath back to repair drift (a
// service someone else changed or removed).
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
	dp datapath.Datapath

	mu        sync.Mutex
	node      *datapath.Node
	desired   map[string]*datapath.Service
	lastDrift []string
	dirty     bool // a kernel error may have left the datapath half-updated
}

// New returns a Reconciler with an empty desired state.
func New(dp datapath.Datapath) *Reconciler {
	return &Reconciler{dp: dp, desired: map[string]*datapath.Service{}}
}

// Datapath returns the datapath the reconciler drives.
func (r *Reconciler) Datapath() datapath.Datapath { return r.dp }

// Apply adds the upserted services to the desired state, removes the named
// ones, and programs the datapath. A service the datapath rejects keeps its
// previous desired state and is returned in failed with its error. err is
// set when the node could not be set; failed services are not an error.
func (r *Reconciler) Apply(ctx context.Context, node *datapath.Node, upsert []*datapath.Service, remove []string) (failed map[string]error, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if node != nil {
		if err := r.dp.SetNode(ctx, *node); err != nil {
			return nil, fmt.Errorf("setting node: %w", err)
		}
		n := *node
		r.node = &n
	}
	if len(upsert) == 0 && len(remove) == 0 {
		return nil, nil
	}
	if err := r.dp.Apply(ctx, upsert, remove); err == nil {
		r.commit(upsert, remove)
		return nil, nil
	} else if !errors.Is(err, datapath.ErrInvalid) && !errors.Is(err, datapath.ErrFull) {
		r.dirty = true
	}
	// The batch failed: apply one by one to find the services at fault.
	failed = map[string]error{}
	if len(remove) > 0 {
		if err := r.dp.Apply(ctx, nil, remove); err != nil {
			for _, k := range remove {
				failed[k] = err
			}
			r.dirty = true
		} else {
			r.commit(nil, remove)
		}
	}
	for _, s := range upsert {
		if err := r.dp.Apply(ctx, []*datapath.Service{s}, nil); err != nil {
			failed[s.Key] = err
			continue
		}
		r.commit([]*datapath.Service{s}, nil)
	}
	return failed, nil
}

func (r *Reconciler) commit(upsert []*datapath.Service, remove []string) {
	for _, k := range remove {
		delete(r.desired, k)
	}
	for _, s := range upsert {
		r.desired[s.Key] = s
	}
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
// desired state. It returns the differences it found.
func (r *Reconciler) Repair(ctx context.Context) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	actual, err := r.dp.Programmed(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading back the datapath: %w", err)
	}
	var drift []string
	var upsert []*datapath.Service
	var remove []string
	for k, want := range r.desired {
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
		if _, ok := r.desired[k]; !ok {
			drift = append(drift, "unexpected "+k)
			remove = append(remove, k)
		}
	}
	slices.Sort(drift)
	r.lastDrift = drift
	if r.node != nil {
		if err := r.dp.SetNode(ctx, *r.node); err != nil {
			return drift, fmt.Errorf("setting node: %w", err)
		}
	}
	if len(upsert) == 0 && len(remove) == 0 {
		r.dirty = false
		return drift, nil
	}
	if err := r.dp.Apply(ctx, upsert, remove); err != nil {
		return drift, fmt.Errorf("repairing %d services: %w", len(upsert)+len(remove), err)
	}
	r.dirty = false
	return drift, nil
}

// Run repairs drift every interval, and sooner, with backoff, after a
// failed repair or a failed apply. It returns when ctx is done.
func (r *Reconciler) Run(ctx context.Context, interval time.Duration, onRepair func(drift []string, err error)) {
	const minRetry, maxRetry = 100 * time.Millisecond, 30 * time.Second
	retry := minRetry
	wait := interval
	for {
		r.mu.Lock()
		if r.dirty {
			wait = min(wait, retry)
		}
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		drift, err := r.Repair(ctx)
		if onRepair != nil {
			onRepair(drift, err)
		}
		if err != nil {
			wait = retry
			retry = min(2*retry, maxRetry)
			continue
		}
		retry, wait = minRetry, interval
	}
}
