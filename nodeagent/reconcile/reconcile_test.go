package reconcile_test

import (
	"context"
	"errors"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/datapath/fault"
	"github.com/spoke-proxy/spoke/datapath/memory"
	"github.com/spoke-proxy/spoke/nodeagent/reconcile"
)

func service(key, ip string) *datapath.Service {
	return &datapath.Service{Key: key, ClusterIPs: []netip.Addr{netip.MustParseAddr(ip)}, Ports: []datapath.Port{{
		Protocol: datapath.TCP, Port: 80,
		Internal: datapath.Backends{NoEndpoints: datapath.Reject, Endpoints: []datapath.Endpoint{{Addr: netip.MustParseAddrPort("10.244.0.1:8080")}}},
	}}}
}

func TestRejectedServicesAreIsolated(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dp := memory.New(memory.Options{})
	r := reconcile.New(dp)
	bad := service("ns/bad", "10.96.0.2")
	bad.Ports[0].Port = 0
	failed, err := r.Apply(ctx, nil, []*datapath.Service{service("ns/good", "10.96.0.1"), bad}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(failed) != 1 || !errors.Is(failed["ns/bad"], datapath.ErrInvalid) {
		t.Fatalf("failed = %v, want ns/bad invalid", failed)
	}
	if got := r.Desired(); len(got) != 1 || got[0] != "ns/good" {
		t.Fatalf("desired %v", got)
	}
	if dp.Len() != 1 {
		t.Fatalf("datapath holds %d services", dp.Len())
	}
}

func TestRepairFixesDrift(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dp := memory.New(memory.Options{})
	r := reconcile.New(dp)
	r.MarkSynced()
	if _, err := r.Apply(ctx, nil, []*datapath.Service{service("ns/a", "10.96.0.1"), service("ns/b", "10.96.0.2")}, nil); err != nil {
		t.Fatal(err)
	}
	// Someone else removes one service, changes another and adds a third.
	if err := dp.Apply(ctx, []*datapath.Service{service("ns/b", "10.96.0.99"), service("ns/x", "10.96.0.3")}, []string{"ns/a"}); err != nil {
		t.Fatal(err)
	}
	drift, err := r.Repair(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"changed ns/b", "missing ns/a", "unexpected ns/x"}
	if len(drift) != len(want) {
		t.Fatalf("drift %v, want %v", drift, want)
	}
	for i := range want {
		if drift[i] != want[i] {
			t.Fatalf("drift %v, want %v", drift, want)
		}
	}
	got, _ := dp.Programmed(ctx)
	if len(got) != 2 || !datapath.Equal(got["ns/b"], service("ns/b", "10.96.0.2")) || got["ns/a"] == nil {
		t.Fatalf("after repair: %v", got)
	}
	if drift, err := r.Repair(ctx); err != nil || len(drift) != 0 {
		t.Fatalf("second repair found %v, %v", drift, err)
	}
}

// A transient failure (ENOMEM, a failed netlink call) is not the service's
// fault: the service stays desired and the run loop retries it soon, not
// after the drift-check interval.
func TestTransientFailureIsRetriedSoon(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mem := memory.New(memory.Options{})
	dp := fault.Wrap(mem)
	r := reconcile.New(dp)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx, time.Hour, nil)
	}()
	defer func() { cancel(); <-done }()
	dp.FailApply("ns/a", syscall.ENOMEM, 2)
	failed, err := r.Apply(ctx, nil, []*datapath.Service{service("ns/a", "10.96.0.1")}, nil)
	if err != nil || len(failed) != 0 {
		t.Fatalf("a transient failure was rejected: %v, %v", failed, err)
	}
	if got := r.Desired(); len(got) != 1 || got[0] != "ns/a" {
		t.Fatalf("desired %v, want ns/a", got)
	}
	for mem.Len() != 1 {
		if ctx.Err() != nil {
			t.Fatal("the service was not retried within 10s (drift interval 1h)")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Before the first sync the desired state may be incomplete (no state
// file): repair must not remove what the datapath holds.
func TestRepairRemovesNothingBeforeSync(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dp := memory.New(memory.Options{})
	if err := dp.Apply(ctx, []*datapath.Service{service("ns/pinned", "10.96.0.1")}, nil); err != nil {
		t.Fatal(err)
	}
	r := reconcile.New(dp)
	if _, err := r.Repair(ctx); err != nil {
		t.Fatal(err)
	}
	if dp.Len() != 1 {
		t.Fatal("repair before the first sync emptied the datapath")
	}
	r.MarkSynced()
	if _, err := r.Repair(ctx); err != nil {
		t.Fatal(err)
	}
	if dp.Len() != 0 {
		t.Fatal("repair after the sync kept a service nobody wants")
	}
}

// heldRead is a datapath whose Programmed, once it has read what the
// datapath holds, waits until released before it returns it.
type heldRead struct {
	*memory.Datapath
	read, release chan struct{}
}

func (d *heldRead) Programmed(ctx context.Context) (map[string]*datapath.Service, error) {
	got, err := d.Datapath.Programmed(ctx)
	close(d.read)
	<-d.release
	return got, err
}

// An apply is not held up while a repair reads the datapath back, and what
// it applied is not taken for drift by that repair, whose read predates it.
func TestApplyGoesOnWhileRepairReadsBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dp := &heldRead{Datapath: memory.New(memory.Options{}), read: make(chan struct{}), release: make(chan struct{})}
	r := reconcile.New(dp)
	r.MarkSynced()
	if _, err := r.Apply(ctx, nil, []*datapath.Service{service("ns/a", "10.96.0.1")}, nil); err != nil {
		t.Fatal(err)
	}
	type result struct {
		drift []string
		err   error
	}
	repaired := make(chan result, 1)
	go func() {
		drift, err := r.Repair(ctx)
		repaired <- result{drift, err}
	}()
	<-dp.read
	applied := make(chan error, 1)
	go func() {
		_, err := r.Apply(ctx, nil, []*datapath.Service{service("ns/b", "10.96.0.2")}, []string{"ns/a"})
		applied <- err
	}()
	select {
	case err := <-applied:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		close(dp.release)
		t.Fatal("the apply waited for the repair's read-back")
	}
	close(dp.release)
	res := <-repaired
	if res.err != nil || len(res.drift) != 0 {
		t.Errorf("the repair found %v, %v; want nothing (what it read of ns/a and ns/b predates the apply)", res.drift, res.err)
	}
	if got, _ := dp.Datapath.Programmed(ctx); len(got) != 1 || got["ns/b"] == nil {
		t.Errorf("after the repair the datapath holds %v, want ns/b alone", got)
	}
}
