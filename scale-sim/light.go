package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
	"github.com/spoke-proxy/spoke/scale-sim/fleet"
	"github.com/spoke-proxy/spoke/scale-sim/lightfleet"
)

// nodeFleet is what the scenarios need of a fleet, full or light.
type nodeFleet interface {
	Len() int
	// Start starts node i and returns how long its agent took to be
	// ready.
	Start(i int) (time.Duration, error)
	Stop(i int)
	StopAll()
	// RxBytes returns the bytes every node has read from the control
	// plane.
	RxBytes() uint64
}

var (
	_ nodeFleet = (*fleet.Fleet)(nil)
	_ nodeFleet = (*lightfleet.Fleet)(nil)
)

// startLightFleet starts the light fleet's worker processes; no node runs
// yet.
func (s *sim) startLightFleet(names []string) error {
	o := lightfleet.Options{
		Names: names, Address: s.cp.Address(), Processes: s.c.fleetProcesses,
		OnApplied: s.tracker.Applied, LogDir: s.c.workDir,
	}
	if s.id != nil {
		o.CAPEM, o.Tokens = s.id.caPEM, s.id.tokens
	}
	s.progressf("starting %d fleet worker processes (logs in %s)", o.Processes, filepath.Join(s.c.workDir, "worker-*.log"))
	f, err := lightfleet.Start(o)
	if err != nil {
		return err
	}
	s.light, s.fleet = f, f
	return nil
}

// compareHashes compares what light agent i holds, the hash of each
// resource's content as it arrived, with the version of the content the
// control plane serves for the node (v).
func (s *sim) compareHashes(ctx context.Context, i int, v *spokev1.GetNodeViewResponse) string {
	st, err := s.light.State(ctx, i)
	if err != nil {
		return fmt.Sprintf("agent: %v", err)
	}
	var diffs []string
	if st.Nacks > 0 {
		diffs = append(diffs, fmt.Sprintf("the agent NACKed %d responses, last: %s", st.Nacks, st.LastNack))
	}
	want := map[string]bool{}
	for _, r := range v.GetResources() {
		want[r.GetName()] = true
		version, err := spokev1.ContentVersion(r)
		if err != nil {
			diffs = append(diffs, fmt.Sprintf("%s: control plane view: %v", r.GetName(), err))
			continue
		}
		if h := st.Held[r.GetName()]; h != version {
			diffs = append(diffs, fmt.Sprintf("%s: agent holds content %q, control plane serves %q", r.GetName(), h, version))
		}
	}
	for n := range st.Held {
		if !want[n] {
			diffs = append(diffs, fmt.Sprintf("%s: held by the agent only", n))
		}
	}
	if len(diffs) == 0 {
		return ""
	}
	sort.Strings(diffs)
	return fmt.Sprintf("%d differences, first: %s", len(diffs), strings.Join(diffs[:min(3, len(diffs))], "; "))
}

// fleetErr returns why the fleet cannot go on (a light fleet's worker
// exited), or nil.
func (s *sim) fleetErr() error {
	if s.light == nil {
		return nil
	}
	if err := s.light.Err(); err != nil {
		return errors.Join(errors.New("the light fleet lost a worker"), err)
	}
	return nil
}
