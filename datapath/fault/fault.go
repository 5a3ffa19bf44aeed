// Package fault wraps a datapath and injects the failures a real one meets:
// transient kernel errors (ENOMEM, a failed netlink call), a table that is
// full until something frees it, and slow writes. The agent's and the
// reconciler's fault tests and `make chaos` drive real datapaths through it.
//
// Caveats: a failure is injected before the wrapped datapath is called, so
// an injected error leaves the datapath as it was (the contract for
// ErrInvalid and ErrFull, a stricter one than a real kernel error gives).
package fault

import (
	"context"
	"slices"
	"sync"

	"github.com/spoke-proxy/spoke/datapath"
)

var (
	_ datapath.Datapath = (*Datapath)(nil)
	_ datapath.Stamper  = (*Datapath)(nil)
)

// Datapath is a datapath.Datapath that fails on request. It is safe for
// concurrent use.
type Datapath struct {
	inner datapath.Datapath

	mu       sync.Mutex
	failures []failure
	hold     chan struct{}
	held     int
	applies  int
	after    func()
}

type failure struct {
	key string // "" fails any apply
	err error
	n   int // remaining; <0 until cleared
}

// Wrap returns a Datapath that passes everything to inner until told to
// fail.
func Wrap(inner datapath.Datapath) *Datapath { return &Datapath{inner: inner} }

// FailApply makes the next n applies that upsert or remove key fail with
// err; key "" matches every apply, n < 0 fails until Clear.
func (d *Datapath) FailApply(key string, err error, n int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failures = append(d.failures, failure{key: key, err: err, n: n})
}

// Clear removes every pending failure.
func (d *Datapath) Clear() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failures = nil
}

// Hold makes applies block, before they reach the wrapped datapath, until
// the returned function is called.
func (d *Datapath) Hold() (release func()) {
	ch := make(chan struct{})
	d.mu.Lock()
	d.hold = ch
	d.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			d.mu.Lock()
			d.hold = nil
			d.mu.Unlock()
			close(ch)
		})
	}
}

// AfterApply calls f after each successful apply of the wrapped datapath,
// before Apply returns: the moment a crash between the datapath write and
// the state file write would leave.
func (d *Datapath) AfterApply(f func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.after = f
}

// Held returns how many applies are waiting for a Hold's release.
func (d *Datapath) Held() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.held
}

// Applies returns how many applies reached the wrapped datapath.
func (d *Datapath) Applies() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.applies
}

// Name implements datapath.Datapath.
func (d *Datapath) Name() string { return d.inner.Name() }

// SetNode implements datapath.Datapath.
func (d *Datapath) SetNode(ctx context.Context, node datapath.Node) error {
	return d.inner.SetNode(ctx, node)
}

// Stamp implements datapath.Stamper: it passes the stamp to the wrapped
// datapath, or fails with errors.ErrUnsupported if that keeps none.
func (d *Datapath) Stamp(ctx context.Context, stamp []byte) error {
	return datapath.Stamp(ctx, d.inner, stamp)
}

// Stamped implements datapath.Stamper like Stamp.
func (d *Datapath) Stamped(ctx context.Context) ([]byte, error) {
	return datapath.Stamped(ctx, d.inner)
}

// Apply implements datapath.Datapath.
func (d *Datapath) Apply(ctx context.Context, upsert []*datapath.Service, remove []string) error {
	if err := d.wait(ctx); err != nil {
		return err
	}
	keys := make([]string, 0, len(upsert)+len(remove))
	for _, s := range upsert {
		keys = append(keys, s.Key)
	}
	keys = append(keys, remove...)
	if err := d.injected(keys); err != nil {
		return err
	}
	if err := d.inner.Apply(ctx, upsert, remove); err != nil {
		return err
	}
	d.mu.Lock()
	d.applies++
	after := d.after
	d.mu.Unlock()
	if after != nil {
		after()
	}
	return nil
}

func (d *Datapath) wait(ctx context.Context) error {
	d.mu.Lock()
	hold := d.hold
	d.mu.Unlock()
	if hold == nil {
		return nil
	}
	d.mu.Lock()
	d.held++
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.held--
		d.mu.Unlock()
	}()
	select {
	case <-hold:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// injected returns the error of the first failure that matches keys, and
// counts it.
func (d *Datapath) injected(keys []string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range d.failures {
		f := &d.failures[i]
		if f.n == 0 || !matches(f.key, keys) {
			continue
		}
		if f.n > 0 {
			f.n--
		}
		return f.err
	}
	return nil
}

func matches(key string, keys []string) bool {
	return key == "" || slices.Contains(keys, key)
}

// Programmed implements datapath.Datapath.
func (d *Datapath) Programmed(ctx context.Context) (map[string]*datapath.Service, error) {
	return d.inner.Programmed(ctx)
}

// Trace passes a packet to the wrapped datapath's tracer; it panics if the
// wrapped datapath has none.
func (d *Datapath) Trace(o datapath.Origin, p datapath.Packet) datapath.Verdict {
	return d.inner.(interface {
		Trace(datapath.Origin, datapath.Packet) datapath.Verdict
	}).Trace(o, p)
}
