// Command scale-sim runs thousands of fake nodes, each the real node agent
// with an in-memory datapath (or, with --fleet light, a light agent in
// worker processes of its own), against a control plane fed by a synthetic
// or a real Kubernetes API, drives a scenario and prints the figures: a
// progress line while it runs, a table at the end, and with --json a last
// line that is one JSON object. See scale-sim/RESULTS.md for measured runs.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/spoke-proxy/spoke/controlplane/watch"
	"github.com/spoke-proxy/spoke/scale-sim/lightfleet"
)

type config struct {
	nodes, zones, services, endpoints int
	localFraction, hintedFraction     float64
	churn                             float64
	duration                          time.Duration
	controlplane                      string
	controlplaneBin                   string
	controlplaneMetrics               string
	api                               string
	kubeconfig                        string
	scenario                          string
	json                              bool
	plot                              string
	window, maxDelay, ackTimeout      time.Duration
	bbolt                             bool
	fleet                             string
	fleetProcesses                    int
	auth                              bool
	fraction                          float64
	slowRate                          int64
	startRate                         float64
	syncTimeout                       time.Duration
	seed                              uint64
	cpuProfile, memProfile            string
	cpCPUProfile, cpHeapProfile       string
	workDir                           string
	newStreamsPerSecond               float64
	newStreamsBurst                   int
	cpMemoryLimitMiB                  int
	verbose                           bool
	out                               io.Writer
	progress                          io.Writer
	progressEvery                     time.Duration
}

var scenarios = []string{"churn", "controlplane-restart", "agent-restart", "slow-agents", "apiserver-load"}

func main() {
	lightfleet.RunWorkerIfAsked()
	c := config{out: os.Stdout, progress: os.Stderr, progressEvery: 5 * time.Second}
	flag.IntVar(&c.nodes, "nodes", 1000, "fake nodes, each running the real agent")
	flag.IntVar(&c.zones, "zones", 3, "zones the nodes are spread over")
	flag.IntVar(&c.services, "services", 1000, "services")
	flag.IntVar(&c.endpoints, "endpoints-per-service", 10, "endpoints of each service")
	flag.Float64Var(&c.localFraction, "local-policy-fraction", 0.1, "fraction of services that are NodePort with externalTrafficPolicy Local")
	flag.Float64Var(&c.hintedFraction, "hinted-fraction", 0.5, "fraction of services with trafficDistribution PreferClose and zone hints")
	flag.Float64Var(&c.churn, "churn", 100, "endpoint changes per second")
	flag.DurationVar(&c.duration, "duration", 60*time.Second, "how long to churn (per phase)")
	flag.StringVar(&c.controlplane, "controlplane", "process", `"process": the spoke-controlplane binary as a child process; "inproc": in this process, for profiling; or the gRPC address of a running control plane`)
	flag.StringVar(&c.controlplaneBin, "controlplane-bin", "", "spoke-controlplane binary; built from this checkout when empty")
	flag.StringVar(&c.controlplaneMetrics, "controlplane-metrics", "", "metrics URL of a running control plane (with --controlplane ADDRESS)")
	flag.StringVar(&c.api, "api", "synthetic", `"synthetic": an in-process API that feeds the control plane's informers; "kube-apiserver": a real one, started here unless --kubeconfig names one`)
	flag.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig of a running API server (with --api kube-apiserver)")
	flag.StringVar(&c.scenario, "scenario", "churn", fmt.Sprintf("one of %v", scenarios))
	flag.BoolVar(&c.json, "json", false, "print one JSON object as the last line")
	flag.StringVar(&c.plot, "plot", "", "write a PNG of propagation latency over time and its distribution")
	flag.DurationVar(&c.window, "debounce-window", watch.DefaultWindow, "the control plane's debounce window")
	flag.DurationVar(&c.maxDelay, "debounce-max-delay", watch.DefaultMaxDelay, "the control plane's debounce maximum delay")
	flag.DurationVar(&c.ackTimeout, "ack-timeout", time.Minute, "the control plane's acknowledgement timeout")
	flag.BoolVar(&c.auth, "auth", true, "agents connect over TLS with tokens bound to agent pods, which the control plane verifies against the API's issuer keys (-agent-auth=token); false: plaintext, node names trusted")
	flag.StringVar(&c.fleet, "fleet", "full", `"full": every node runs the real agent, in this process; "light": light agents that speak the stream protocol and hold content hashes only, in --fleet-processes worker processes of their own (churn and controlplane-restart)`)
	flag.IntVar(&c.fleetProcesses, "fleet-processes", 2, "worker processes of a light fleet")
	flag.BoolVar(&c.bbolt, "bbolt", false, "give every agent a bbolt state file (always on for agent-restart)")
	flag.Float64Var(&c.fraction, "fraction", 0.1, "fraction of agents restarted (agent-restart) or slow (slow-agents)")
	flag.Int64Var(&c.slowRate, "slow-rate", 2048, "bytes per second a slow agent reads")
	flag.Float64Var(&c.startRate, "agent-start-rate", 1000, "agents started per second")
	flag.DurationVar(&c.syncTimeout, "sync-timeout", 15*time.Minute, "how long every agent may take to hold its whole view")
	flag.Uint64Var(&c.seed, "seed", 1, "seed of the generated cluster and churn")
	flag.StringVar(&c.cpuProfile, "cpuprofile", "", "write a CPU profile of this process (the control plane too with --controlplane inproc)")
	flag.StringVar(&c.memProfile, "memprofile", "", "write a heap profile of this process at the end")
	flag.StringVar(&c.cpCPUProfile, "controlplane-cpuprofile", "", "write a CPU profile of the control plane's process over the measured churn (controlplane-restart without churn: over the 20 s from its restart), from its /debug/pprof/")
	flag.StringVar(&c.cpHeapProfile, "controlplane-memprofile", "", "write a heap profile of the control plane's process at the end, from its /debug/pprof/")
	flag.Float64Var(&c.newStreamsPerSecond, "new-streams-per-second", -1, "the control plane's token bucket on new agent streams (its -new-streams-per-second); 0 or less: none, so that the figures measure the control plane rather than the limit")
	flag.IntVar(&c.newStreamsBurst, "new-streams-burst", 0, "the token bucket's burst (its -new-streams-burst); 0: the rate's one second")
	flag.IntVar(&c.cpMemoryLimitMiB, "controlplane-memory-limit-mib", 0, "the control plane's memory limit (GOMEMLIMIT, as a pod's limit would set it); controlplane-restart reports whether its peak RSS stayed within it; 0: none")
	flag.StringVar(&c.workDir, "workdir", "", "folder for logs and state files; a temporary one, removed at the end, when empty")
	flag.BoolVar(&c.verbose, "v", false, "log the control plane (inproc) and agents")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if _, err := run(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "scale-sim:", err)
		os.Exit(1)
	}
}

func (c *config) validate() error {
	if c.fleet == "" {
		c.fleet = "full"
	}
	known := false
	for _, s := range scenarios {
		known = known || s == c.scenario
	}
	switch {
	case !known:
		return fmt.Errorf("unknown scenario %q; one of %v", c.scenario, scenarios)
	case c.nodes < 1 || c.services < 1 || c.endpoints < 1 || c.zones < 1:
		return errors.New("--nodes, --services, --endpoints-per-service and --zones must be positive")
	case c.api != "synthetic" && c.api != "kube-apiserver":
		return fmt.Errorf("--api %q: synthetic or kube-apiserver", c.api)
	case c.scenario == "apiserver-load" && c.api != "kube-apiserver":
		return errors.New("apiserver-load compares what a real API server sends: use --api kube-apiserver")
	case c.fraction < 0 || c.fraction > 1:
		return errors.New("--fraction must be within [0, 1]")
	case c.churn < 0:
		return errors.New("--churn must not be negative")
	case c.fleet != "full" && c.fleet != "light":
		return fmt.Errorf("--fleet %q: full or light", c.fleet)
	case c.fleet == "light" && c.scenario != "churn" && c.scenario != "controlplane-restart":
		return fmt.Errorf("scenario %s needs the real agents (bbolt state, a datapath, slow reads): use --fleet full; a light fleet runs churn and controlplane-restart", c.scenario)
	case c.fleet == "light" && c.bbolt:
		return errors.New("--bbolt needs the real agents: light agents keep no state file")
	case c.fleet == "light" && c.fleetProcesses < 1:
		return errors.New("--fleet-processes must be positive")
	case c.newStreamsBurst < 0:
		return errors.New("--new-streams-burst must not be negative")
	case c.cpMemoryLimitMiB != 0 && c.controlplane != "process":
		return errors.New("--controlplane-memory-limit-mib needs a control plane in a process of its own (--controlplane process)")
	case c.auth && c.controlplane != "process" && c.controlplane != "inproc":
		return errors.New("--auth needs a control plane the simulator starts: --auth=false for a running one")
	}
	return nil
}

// run runs one scenario and returns its report.
func run(ctx context.Context, c config) (*report, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	log := slog.New(slog.NewTextHandler(c.progress, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if c.verbose {
		log = slog.New(slog.NewTextHandler(c.progress, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	raiseFileLimit()
	if c.workDir == "" {
		dir, err := os.MkdirTemp("", "scale-sim-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		c.workDir = dir
	} else if err := os.MkdirAll(c.workDir, 0o755); err != nil {
		return nil, err
	}
	if c.cpuProfile != "" {
		f, err := os.Create(c.cpuProfile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
		defer pprof.StopCPUProfile()
	}
	s, err := setup(ctx, c, log)
	if s != nil {
		defer s.close()
	}
	if err != nil {
		return nil, err
	}
	if err := s.runScenario(ctx); err != nil {
		return nil, err
	}
	if err := s.finishProfiles(ctx); err != nil {
		return nil, err
	}
	rep, err := s.finish(ctx)
	if err != nil {
		return nil, err
	}
	if c.memProfile != "" {
		f, err := os.Create(c.memProfile)
		if err != nil {
			return nil, err
		}
		pprof.WriteHeapProfile(f)
		f.Close()
	}
	rep.print(c.out, c.json)
	if c.plot != "" {
		if err := writePlot(c.plot, s.tracker, rep); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

func raiseFileLimit() {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err == nil && l.Cur < l.Max {
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}
