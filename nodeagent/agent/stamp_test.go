package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/datapath/fault"
	"github.com/spoke-proxy/spoke/datapath/memory"
	"github.com/spoke-proxy/spoke/internal/wait"
	"github.com/spoke-proxy/spoke/nodeagent/agent"
)

// offlineAgent is an agent with no control plane to reach and no periodic
// drift check.
func offlineAgent(t *testing.T, statePath string, dp datapath.Datapath) *agent.Agent {
	t.Helper()
	a, err := agent.New(agent.Options{NodeName: "node-1", Conn: dial(t, unreachable), Datapath: dp, StatePath: statePath,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// A restarted agent whose datapath is stamped with its state file's stamp
// takes the datapath as it is, programming nothing, and then reads it back
// and repairs what someone else changed.
func TestRestartAdoptsStampedDatapath(t *testing.T) {
	ctx := context.Background()
	statePath := filepath.Join(t.TempDir(), "state.db")
	cp := startControlPlane(t, "127.0.0.1:0", newStore(t, svc("web", "10.96.0.10", "10.244.1.5"), svc("api", "10.96.0.11", "10.244.2.5")))
	mem := memory.New(memory.Options{})
	syncOnce(t, cp, statePath, mem)
	if stamp, err := mem.Stamped(ctx); err != nil || stamp == nil {
		t.Fatalf("after a sync the datapath's stamp is %x, %v; want one", stamp, err)
	}

	dp := fault.Wrap(mem)
	a2 := offlineAgent(t, statePath, dp)
	if err := a2.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	a2.Close()
	if n := dp.Applies(); n != 0 {
		t.Errorf("restarting on a stamped datapath applied %d times, want none", n)
	}
	if got := len(a2.Reconciler().Desired()); got != 2 {
		t.Errorf("after adopting: %d services desired, want 2", got)
	}
	if v := trace(mem, "10.96.0.10:80"); v.Backend.String() != "10.244.1.5:8080" {
		t.Fatalf("after adopting: %v", v)
	}

	// Someone else removes a service; the stamp cannot know.
	if err := mem.Apply(ctx, nil, []string{"default/web"}); err != nil {
		t.Fatal(err)
	}
	a3 := offlineAgent(t, statePath, dp)
	run(t, a3)
	wait.ForTrue(t, settle, "the adopted datapath is verified and web programmed again", func() bool {
		return trace(mem, "10.96.0.10:80").Backend.String() == "10.244.1.5:8080"
	})
}

// A kill after the state file took an update and before the datapath did
// leaves a datapath stamped for the file's previous content: the restart
// must program the file, not adopt the datapath.
func TestRestartProgramsStateFileNewerThanStamp(t *testing.T) {
	dir := t.TempDir()
	statePath := filepath.Join(dir, "state.db")
	cp := startControlPlane(t, "127.0.0.1:0", newStore(t, svc("web", "10.96.0.10", "10.244.1.5")))
	mem := memory.New(memory.Options{})
	dp := fault.Wrap(mem)
	a, err := agent.New(agent.Options{NodeName: "node-1", Conn: dial(t, cp.addr), Datapath: dp, StatePath: statePath, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, a)
	synced(t, cp, a)

	release := dp.Hold()
	defer release()
	set(t, cp.store, svc("web", "10.96.0.10", "10.244.1.6"))
	wait.ForTrue(t, settle, "version 2 is in the state file, not yet in the datapath", func() bool { return dp.Held() == 1 })
	crashed := filepath.Join(dir, "crashed.db")
	b, err := os.ReadFile(statePath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(crashed, b, 0o600); err != nil {
		t.Fatal(err)
	}
	stop()
	if v := trace(mem, "10.96.0.10:80"); v.Backend.String() != "10.244.1.5:8080" {
		t.Fatalf("before the restart the datapath should still hold version 1: %v", v)
	}

	a2 := offlineAgent(t, crashed, mem)
	if err := a2.Restore(context.Background()); err != nil {
		t.Fatal(err)
	}
	a2.Close()
	if v := trace(mem, "10.96.0.10:80"); v.Backend.String() != "10.244.1.6:8080" {
		t.Fatalf("the restart adopted a datapath older than its state file: %v", v)
	}
}
