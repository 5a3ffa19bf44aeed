package agent_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/spoke-proxy/spoke/datapath/memory"
	"github.com/spoke-proxy/spoke/nodeagent/agent"
	"github.com/spoke-proxy/spoke/nodeagent/state/statetest"
)

// BenchmarkRestore10kServices measures what an agent does on start before
// it is ready: open its state file holding 10,000 services of 10 endpoints,
// check and decode every entry, and program the datapath from them.
func BenchmarkRestore10kServices(b *testing.B) {
	path := filepath.Join(b.TempDir(), "state.db")
	if err := statetest.Write(path, 10000, 10); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		dp := memory.New(memory.Options{})
		a, err := agent.New(agent.Options{NodeName: "node-1", Conn: dial(b, "127.0.0.1:1"), Datapath: dp, StatePath: path})
		if err != nil {
			b.Fatal(err)
		}
		if err := a.Restore(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if got := dp.Len(); got != 10000 {
			b.Fatalf("%d services programmed, want 10000", got)
		}
		a.Close()
		b.StartTimer()
	}
}
