package agent_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/spoke-proxy/spoke/datapath/memory"
	"github.com/spoke-proxy/spoke/nodeagent/agent"
	agentstate "github.com/spoke-proxy/spoke/nodeagent/state"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// BenchmarkRestore10kServices measures what an agent does on start before
// it is ready: open its state file holding 10,000 services of 10 endpoints,
// check and decode every entry, and program the datapath from them.
func BenchmarkRestore10kServices(b *testing.B) {
	path := filepath.Join(b.TempDir(), "state.db")
	st, err := agentstate.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	var put []*spokev1.Resource
	put = append(put, &spokev1.Resource{Name: spokev1.NodeResourceName, Version: "n1",
		Kind: &spokev1.Resource_Node{Node: &spokev1.Node{Name: "node-1", Addresses: []string{"192.168.0.1"}}}})
	for i := range 10000 {
		var eps []string
		for j := range 10 {
			k := i*10 + j
			eps = append(eps, fmt.Sprintf("10.%d.%d.%d", 128+k>>16, k>>8&255, k&255))
		}
		s := svc(fmt.Sprintf("svc-%d", i), fmt.Sprintf("10.96.%d.%d", i>>8, i&255), eps...)
		r := &spokev1.Resource{Name: "default/" + s.Name, Kind: &spokev1.Resource_Service{Service: s}}
		if r.Version, err = spokev1.ContentVersion(r); err != nil {
			b.Fatal(err)
		}
		put = append(put, r)
	}
	if err := st.Update(put, nil, nil); err != nil {
		b.Fatal(err)
	}
	st.Close()
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
