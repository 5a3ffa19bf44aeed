package agent_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spoke-proxy/spoke/controlplane/model"
	"github.com/spoke-proxy/spoke/controlplane/store"
	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/datapath/fault"
	"github.com/spoke-proxy/spoke/datapath/memory"
	"github.com/spoke-proxy/spoke/internal/wait"
	"github.com/spoke-proxy/spoke/nodeagent/agent"
	"github.com/spoke-proxy/spoke/nodeagent/view"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// unreachable is a control-plane address nothing listens on.
const unreachable = "127.0.0.1:1"

func newFaultAgent(t *testing.T, addr, statePath string, dp datapath.Datapath) *agent.Agent {
	t.Helper()
	a, err := agent.New(agent.Options{
		NodeName: "node-1", Conn: dial(t, addr), Datapath: dp, StatePath: statePath,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		RepairInterval: 20 * time.Millisecond, Logger: testLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// pinned returns a datapath that already holds web, as the eBPF maps pinned
// by an agent that was killed do.
func pinned(t *testing.T) *memory.Datapath {
	t.Helper()
	dp := memory.New(memory.Options{})
	r := resource(t, svc("web", "10.96.0.10", "10.244.1.5"))
	s, err := view.Service(r)
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.Apply(context.Background(), []*datapath.Service{s}, nil); err != nil {
		t.Fatal(err)
	}
	return dp
}

func remove(t *testing.T, st *store.Store, name string) {
	t.Helper()
	if _, err := st.Apply(store.Batch{Services: map[string]*model.Views{name: {}}}); err != nil {
		t.Fatal(err)
	}
}

func resource(t *testing.T, s *spokev1.Service) *spokev1.Resource {
	t.Helper()
	r := &spokev1.Resource{Name: s.Namespace + "/" + s.Name, Kind: &spokev1.Resource_Service{Service: s}}
	v, err := spokev1.ContentVersion(r)
	if err != nil {
		t.Fatal(err)
	}
	r.Version = v
	return r
}

// An agent restarted with no usable state file while the control plane is
// away keeps forwarding what the datapath holds: drift repair removes
// nothing before the first sync.
func TestOfflineRestartKeepsDatapath(t *testing.T) {
	for name, prepare := range map[string]func(path string) error{
		"missing": func(string) error { return nil },
		"corrupt": func(path string) error { return os.WriteFile(path, []byte(strings.Repeat("x", 8192)), 0o600) },
	} {
		t.Run(name, func(t *testing.T) {
			statePath := filepath.Join(t.TempDir(), "state.db")
			if err := prepare(statePath); err != nil {
				t.Fatal(err)
			}
			dp := pinned(t)
			a := newFaultAgent(t, unreachable, statePath, dp)
			run(t, a)
			wait.ForTrue(t, settle, "several drift checks ran", func() bool { return len(a.Reconciler().LastDrift()) > 0 })
			time.Sleep(100 * time.Millisecond)
			if v := trace(dp, "10.96.0.10:80"); v.Action != datapath.Forward {
				t.Fatalf("with the control plane away and no state, the datapath was emptied: %v", v)
			}
		})
	}
}

// After the first sync, what the control plane does not send is removed.
func TestOrphanRemovedAfterSync(t *testing.T) {
	cp := startControlPlane(t, "127.0.0.1:0", newStore(t, svc("api", "10.96.0.11", "10.244.2.5")))
	dp := pinned(t)
	a := newFaultAgent(t, cp.addr, "", dp)
	run(t, a)
	synced(t, cp, a)
	wait.ForTrue(t, settle, "the orphan is removed", func() bool { return trace(dp, "10.96.0.10:80").Action == datapath.Pass })
	if v := trace(dp, "10.96.0.11:80"); v.Action != datapath.Forward {
		t.Fatalf("api: %v", v)
	}
}

// A kill after the datapath was written and before the state file was must
// not make the restart roll the datapath back to the older cached version.
func TestCrashBetweenWritesDoesNotRollBack(t *testing.T) {
	dir := t.TempDir()
	statePath := filepath.Join(dir, "state.db")
	cp := startControlPlane(t, "127.0.0.1:0", newStore(t, svc("web", "10.96.0.10", "10.244.1.5")))
	mem := memory.New(memory.Options{})
	dp := fault.Wrap(mem)
	a := newFaultAgent(t, cp.addr, statePath, dp)
	stop := run(t, a)
	synced(t, cp, a)

	// The moment after the datapath took version 2: the state file as a
	// kill would leave it.
	crashed := filepath.Join(dir, "crashed.db")
	dp.AfterApply(func() {
		if b, err := os.ReadFile(statePath); err == nil {
			os.WriteFile(crashed, b, 0o600)
		}
	})
	set(t, cp.store, svc("web", "10.96.0.10", "10.244.1.6"))
	wait.ForTrue(t, settle, "version 2 is applied", func() bool { return trace(mem, "10.96.0.10:80").Backend.String() == "10.244.1.6:8080" })
	synced(t, cp, a)
	stop()

	// Restart from that file, on the same (pinned) datapath, offline.
	a2 := newFaultAgent(t, unreachable, crashed, mem)
	if err := a2.Restore(context.Background()); err != nil {
		t.Fatal(err)
	}
	a2.Close()
	if v := trace(mem, "10.96.0.10:80"); v.Backend.String() != "10.244.1.6:8080" {
		t.Fatalf("the restart rolled the datapath back: %v", v)
	}
}

// A transient failure is retried and applied without a new version, and
// is not NACKed; a table that is full until another service goes is a
// transient failure.
func TestTransientFailureIsRetriedWithoutNewVersion(t *testing.T) {
	cp := startControlPlane(t, "127.0.0.1:0", newStore(t, svc("web", "10.96.0.10", "10.244.1.5")))
	mem := memory.New(memory.Options{MaxServices: 1})
	dp := fault.Wrap(mem)
	a := newFaultAgent(t, cp.addr, filepath.Join(t.TempDir(), "state.db"), dp)
	run(t, a)
	synced(t, cp, a)

	// ENOMEM on api's first tries; the table is full as well until web goes.
	dp.FailApply("default/api", syscall.ENOMEM, 3)
	set(t, cp.store, svc("api", "10.96.0.11", "10.244.2.5"))
	wait.ForTrue(t, settle, "api is accepted", func() bool { return len(state(t, a).GetCached()) == 3 })
	synced(t, cp, a)
	if ns := nodeStatus(t, cp); len(ns.GetNacked()) != 0 {
		t.Fatalf("a transient failure was NACKed: %v", ns.GetNacked())
	}
	received := state(t, a).GetResourcesReceived()
	remove(t, cp.store, "default/web")
	wait.ForTrue(t, settle, "api is programmed once web freed the table", func() bool {
		return trace(mem, "10.96.0.11:80").Action == datapath.Forward
	})
	synced(t, cp, a)
	if got := state(t, a).GetResourcesReceived() - received; got != 0 {
		t.Fatalf("the agent needed %d resources resent to apply api", got)
	}
	if st := state(t, a); st.GetNacks() != 0 {
		t.Fatalf("agent NACKed: %s", st.GetLastNack())
	}
}

// Invalid input is NACKed, that version is never resent, and a later good
// version is applied.
func TestInvalidIsNackedOnceThenGoodVersionApplied(t *testing.T) {
	cp := startControlPlane(t, "127.0.0.1:0", newStore(t))
	mem := memory.New(memory.Options{})
	dp := fault.Wrap(mem)
	a := newFaultAgent(t, cp.addr, filepath.Join(t.TempDir(), "state.db"), dp)
	run(t, a)
	synced(t, cp, a)
	dp.FailApply("default/api", fmt.Errorf("%w default/api: injected", datapath.ErrInvalid), -1)
	set(t, cp.store, svc("api", "10.96.0.11", "10.244.2.5"))
	wait.ForTrue(t, settle, "the NACK", func() bool { return len(nodeStatus(t, cp).GetNacked()) == 1 })
	synced(t, cp, a)
	received := state(t, a).GetResourcesReceived()
	time.Sleep(100 * time.Millisecond) // drift checks run; the version is not resent
	if got := state(t, a).GetResourcesReceived() - received; got != 0 {
		t.Fatalf("the NACKed version was resent %d times", got)
	}
	dp.Clear()
	set(t, cp.store, svc("api", "10.96.0.11", "10.244.2.6"))
	wait.ForTrue(t, settle, "the good version", func() bool { return trace(mem, "10.96.0.11:80").Backend.String() == "10.244.2.6:8080" })
	if st := state(t, a); st.GetNacks() != 1 {
		t.Fatalf("%d NACKs, want 1", st.GetNacks())
	}
}

// /healthz answers while an apply is stuck in the kernel.
func TestHealthzDoesNotWaitForApply(t *testing.T) {
	cp := startControlPlane(t, "127.0.0.1:0", newStore(t, svc("web", "10.96.0.10", "10.244.1.5")))
	dp := fault.Wrap(memory.New(memory.Options{}))
	a := newFaultAgent(t, cp.addr, filepath.Join(t.TempDir(), "state.db"), dp)
	run(t, a)
	synced(t, cp, a)
	srv := httptest.NewServer(a.HealthzHandler())
	defer srv.Close()
	release := dp.Hold()
	defer release() // before srv.Close, which waits for a stuck handler
	set(t, cp.store, svc("web", "10.96.0.10", "10.244.1.6"))
	wait.ForTrue(t, settle, "an apply is stuck", func() bool { return dp.Held() > 0 })
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("/healthz while an apply is stuck: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz: %s", resp.Status)
	}
}

// A state file the system will not let the agent open is not corruption:
// the agent runs without it, leaves the datapath as it is, resyncs, and
// does not move the file.
func TestUnusableStateFileRunsWithoutCache(t *testing.T) {
	dir := t.TempDir()
	notDir := filepath.Join(dir, "file")
	if err := os.WriteFile(notDir, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	statePath := filepath.Join(notDir, "state.db") // ENOTDIR
	dp := pinned(t)
	a := newFaultAgent(t, unreachable, statePath, dp)
	if err := a.Restore(context.Background()); err != nil {
		t.Fatalf("restore failed (the agent would exit and crash-loop): %v", err)
	}
	if !a.Ready() {
		t.Fatal("not ready without a state file")
	}
	a.Close()
	if v := trace(dp, "10.96.0.10:80"); v.Action != datapath.Forward {
		t.Fatalf("datapath touched: %v", v)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "*corrupt*")); len(m) != 0 {
		t.Fatalf("moved aside: %v", m)
	}
}
