package agent

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/spoke-proxy/spoke/datapath/memory"
)

// The agent is healthy once restored, and stops being healthy when its
// datapath has been neither programmed nor verified for two repair
// intervals.
func TestHealthFollowsTheLastUpdate(t *testing.T) {
	a, err := New(Options{NodeName: "n", Conn: &grpc.ClientConn{}, Datapath: memory.New(memory.Options{}), RepairInterval: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if ok, _ := a.health(now); ok {
		t.Error("healthy before the state was restored")
	}
	if err := a.Restore(context.Background()); err != nil {
		t.Fatal(err)
	}
	ok, last := a.health(now.Add(time.Minute))
	if !ok || last.IsZero() {
		t.Errorf("restored a minute ago: healthy %v, last update %v", ok, last)
	}
	if ok, _ := a.health(last.Add(2*time.Minute + time.Second)); ok {
		t.Error("healthy with no update for more than two repair intervals")
	}
	a.markUpdated()
	if ok, _ := a.health(time.Now().Add(time.Minute)); !ok {
		t.Error("not healthy after a verified datapath")
	}
}
