package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	spokeebpf "github.com/spoke-proxy/spoke/datapath/ebpf"
	"github.com/spoke-proxy/spoke/internal/ebpftest"
	"github.com/spoke-proxy/spoke/internal/loopback"
	"github.com/spoke-proxy/spoke/internal/testnet"
	"github.com/spoke-proxy/spoke/nodeagent/state/statetest"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// BenchmarkRestartProcess measures an agent restart as its node sees it:
// from the exec of the agent (this package's main, in a process of its own)
// to the log line that says its datapath is programmed from the state file,
// with no control plane to reach. The state file holds 10,000 services of
// 10 endpoints (100 in -short mode). One iteration is one process, after
// one untimed start; the metrics are the percentiles over the iterations
// (-benchtime 20x for a p99 worth the name). After the last one the test
// reads the programmed services back through the agent's inspection
// service.
//
// memory: the in-memory datapath, programmed from the file on every start.
// ebpf-cold: the eBPF datapath with nothing in the kernel (its pins removed
// before each start): programs loaded and attached, every map written.
// ebpf-unstamped: the eBPF datapath finding the previous process's pinned
// maps, but the state file changed since they were stamped (as after a
// crash between the two writes): the maps are read back and what differs
// is programmed.
// ebpf: the eBPF datapath finding the previous process's pinned maps
// stamped with the state file's stamp, as after a crash or an upgrade: the
// agent takes them as they are (and verifies them once it is ready).
func BenchmarkRestartProcess(b *testing.B) {
	services := 10000
	if testing.Short() {
		services = 100
	}
	state := filepath.Join(b.TempDir(), "state.db")
	if err := statetest.Write(state, services, 10); err != nil {
		b.Fatal(err)
	}
	b.Run("memory", func(b *testing.B) {
		benchRestart(b, services, false, func() {}, "-datapath", "memory", "-state-file", state)
	})
	for _, c := range []string{"ebpf-cold", "ebpf-unstamped", "ebpf"} {
		b.Run(c, func(b *testing.B) {
			testnet.RequireRoot(b)
			lab := testnet.NewForTest(b, testnet.Options{})
			if err := lab.SetNodeAddrs([]netip.Addr{netip.MustParseAddr(statetest.NodeAddr)}); err != nil {
				b.Fatal(err)
			}
			opts, ebpfArgs := ebpftest.AgentDatapath(b, lab)
			before := func() {}
			switch c {
			case "ebpf-cold":
				before = func() {
					if err := spokeebpf.Cleanup(opts); err != nil {
						b.Fatal(err)
					}
				}
			case "ebpf-unstamped":
				before = func() {
					if err := statetest.Touch(state); err != nil {
						b.Fatal(err)
					}
				}
			}
			benchRestart(b, services, c == "ebpf", before, append(ebpfArgs, "-state-file", state)...)
		})
	}
}

// benchRestart starts the agent with args once untimed, then once per
// iteration, calling before first (untimed), and reports the percentiles
// of the time from exec to the datapath programmed from the state file.
// Each timed start must have found the datapath stamped, or not, as
// stamped says.
func benchRestart(b *testing.B, services int, stamped bool, before func(), args ...string) {
	inspect := loopback.FreeAddr(b)
	args = append(args, "-node-name", "node-1", "-controlplane", "127.0.0.1:1", "-insecure", "-token-file", "",
		"-log-format", "json", "-healthz-address", loopback.FreeAddr(b), "-metrics-address", loopback.FreeAddr(b), "-inspect-address", inspect)
	var took []time.Duration
	last, _, err := startUntilRestored(args)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		last.Process.Kill()
		last.Wait()
		before()
		b.StartTimer()
		start := time.Now()
		cmd, restored, err := startUntilRestored(args)
		if err != nil {
			b.Fatal(err)
		}
		took = append(took, time.Since(start))
		last = cmd
		if restored.Resources != services+1 {
			b.Fatalf("the agent restored %d resources, want %d services and its node", restored.Resources, services)
		}
		if restored.Stamped != stamped {
			b.Fatalf("the agent found the datapath stamped: %v, want %v", restored.Stamped, stamped)
		}
	}
	b.StopTimer()
	defer func() { last.Process.Kill(); last.Wait() }()
	if got, err := programmedServices(inspect); err != nil {
		b.Fatal(err)
	} else if got != services {
		b.Fatalf("the agent's datapath holds %d services, want %d", got, services)
	}
	slices.Sort(took)
	q := func(p float64) float64 {
		return float64(took[min(len(took)-1, int(p*float64(len(took))))].Microseconds()) / 1000
	}
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(0, "ns/op")
}

// restoredLine is the agent's log line that says it programmed its datapath
// from its state file.
type restoredLine struct {
	Msg       string `json:"msg"`
	Resources int    `json:"resources"`
	Stamped   bool   `json:"stamped"`
}

// startUntilRestored starts the agent and reads its log until the line that
// says how many resources it programmed from its state file.
func startUntilRestored(args []string) (*exec.Cmd, restoredLine, error) {
	cmd := exec.Command(os.Args[0], append([]string{"-test.run=^$"}, args...)...)
	cmd.Env = append(os.Environ(), agentEnv+"=1")
	logs, err := cmd.StderrPipe()
	if err != nil {
		return nil, restoredLine{}, err
	}
	if err := cmd.Start(); err != nil {
		return nil, restoredLine{}, err
	}
	lines := bufio.NewScanner(logs)
	for lines.Scan() {
		var l restoredLine
		if json.Unmarshal(lines.Bytes(), &l) == nil && l.Msg == "datapath programmed from state file" {
			go io.Copy(io.Discard, logs)
			return cmd, l, nil
		}
	}
	cmd.Process.Kill()
	cmd.Wait()
	return nil, restoredLine{}, fmt.Errorf("the agent exited before programming its datapath from the state file")
}

// programmedServices asks the agent at addr how many services its datapath
// holds.
func programmedServices(addr string) (int, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := spokev1.NewAgentInspectionServiceClient(conn).GetState(ctx, &spokev1.GetStateRequest{}, grpc.WaitForReady(true))
	if err != nil {
		return 0, fmt.Errorf("reading the agent's state: %w", err)
	}
	return len(st.GetProgrammedServices()), nil
}
