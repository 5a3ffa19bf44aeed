package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/datapath/ebpf"
	"github.com/spoke-proxy/spoke/datapath/ipvs"
	"github.com/spoke-proxy/spoke/datapath/memory"
)

// datapathFlags are the flags that choose and size the datapath.
type datapathFlags struct {
	name    string
	ebpf    ebpf.Options
	devices string
	pods    string
	tc      string
}

func (f *datapathFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.name, "datapath", "ebpf", "datapath to program: ebpf, ipvs or memory")
	fs.StringVar(&f.ebpf.PinPath, "bpf-pin-path", ebpf.DefaultPinPath, "bpffs folder that holds the eBPF maps and links across restarts")
	fs.StringVar(&f.ebpf.CgroupPath, "cgroup-root", ebpf.DefaultCgroupPath, "cgroup v2 folder whose sockets are load balanced (hybrid hosts: /sys/fs/cgroup/unified)")
	fs.StringVar(&f.devices, "devices", "", "comma-separated interfaces on which traffic from outside arrives (ebpf) or towards other nodes (ipvs); empty: those holding the node's addresses")
	fs.StringVar(&f.ebpf.NetNS, "devices-netns", "", "network namespace file the devices are in; empty: the agent's")
	fs.StringVar(&f.pods, "pod-devices", DefaultPodDevices, "comma-separated patterns of the interfaces pods send from (ebpf: SCTP from pods to services is balanced there, as no socket hook sees it); empty: none")
	fs.StringVar(&f.tc, "tc-mode", "auto", "how tc programs attach: auto (tcx where the kernel has it), tcx or clsact")
	fs.IntVar(&f.ebpf.MaxServices, "bpf-max-services", 0, "services the eBPF maps hold (0: 16384)")
	fs.IntVar(&f.ebpf.MaxFrontends, "bpf-max-frontends", 0, "service addresses and ports (0: 65536)")
	fs.IntVar(&f.ebpf.MaxBackends, "bpf-max-backends", 0, "distinct endpoint addresses (0: 262144)")
	fs.IntVar(&f.ebpf.MaxEndpoints, "bpf-max-endpoints", 0, "endpoints summed over every service port (0: 262144)")
	fs.IntVar(&f.ebpf.MaxConnections, "bpf-max-connections", 0, "connection-table entries of traffic from outside (0: 262144)")
	fs.IntVar(&f.ebpf.MaxAffinity, "bpf-max-affinity", 0, "ClientIP affinity entries (0: 65536)")
	fs.IntVar(&f.ebpf.MaxSockets, "bpf-max-sockets", 0, "per-socket reverse translations (0: 262144)")
}

// DefaultPodDevices are the device names common CNI plugins give the
// node's end of a pod's interface, or the bridge pods hang off: Cilium,
// Calico, veth-based plugins (bridge, ptp, kindnet, flannel's cni0) and
// kubenet.
const DefaultPodDevices = "lxc*,cali*,veth*,cni0,cbr0"

// ebpfOptions completes the eBPF options from the string flags.
func (f *datapathFlags) ebpfOptions() (ebpf.Options, error) {
	opts := f.ebpf
	opts.Devices = splitList(f.devices)
	opts.PodDevices = splitList(f.pods)
	switch f.tc {
	case "auto":
		opts.TC = ebpf.TCAuto
	case "tcx":
		opts.TC = ebpf.TCX
	case "clsact":
		opts.TC = ebpf.TCClsact
	default:
		return opts, fmt.Errorf("unknown -tc-mode %q (auto, tcx or clsact)", f.tc)
	}
	return opts, nil
}

// splitList splits a comma-separated flag, dropping empty items.
func splitList(s string) []string {
	var out []string
	for v := range strings.SplitSeq(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// open opens the chosen datapath. A full eBPF map is counted by name in
// reg; what fails in the background is logged.
func (f *datapathFlags) open(reg prometheus.Registerer, log *slog.Logger) (datapath.Datapath, func() error, error) {
	switch f.name {
	case "memory":
		return memory.New(memory.Options{}), func() error { return nil }, nil
	case "ebpf":
		opts, err := f.ebpfOptions()
		if err != nil {
			return nil, nil, err
		}
		full := prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "spoke", Subsystem: "agent", Name: "datapath_map_full_total",
			Help: "Changes the eBPF datapath refused because the named map would overflow.",
		}, []string{"map"})
		reg.MustRegister(full)
		opts.OnFull = func(m string) { full.WithLabelValues(m).Inc() }
		opts.OnError = func(err error) { log.Warn("ebpf datapath", "error", err) }
		dp, err := ebpf.New(opts)
		if err != nil {
			return nil, nil, err
		}
		return dp, dp.Close, nil
	case "ipvs":
		eo, err := f.ebpfOptions()
		if err != nil {
			return nil, nil, err
		}
		dp, err := ipvs.New(ipvs.Options{NetNS: eo.NetNS, Devices: eo.Devices})
		if err != nil {
			return nil, nil, err
		}
		return dp, dp.Close, nil
	}
	return nil, nil, fmt.Errorf("unknown datapath %q (ebpf, ipvs or memory)", f.name)
}

// cleanup removes what the chosen datapath leaves in the kernel.
func (f *datapathFlags) cleanup() error {
	switch f.name {
	case "ipvs":
		return ipvs.Cleanup(ipvs.Options{NetNS: f.ebpf.NetNS})
	case "ebpf":
	default:
		return nil
	}
	opts, err := f.ebpfOptions()
	if err != nil {
		return err
	}
	return ebpf.Cleanup(opts)
}

// opening is a datapath being opened in the background, so that the agent
// reads and decodes its state file meanwhile (opening the eBPF datapath is
// mostly the kernel verifying its programs). Each method waits for the
// open to end and fails with its error if it failed.
type opening struct {
	done  chan struct{}
	dp    datapath.Datapath
	close func() error
	err   error
}

var (
	_ datapath.Datapath = (*opening)(nil)
	_ datapath.Stamper  = (*opening)(nil)
)

// openInBackground starts opening the chosen datapath.
func (f *datapathFlags) openInBackground(reg prometheus.Registerer, log *slog.Logger) *opening {
	o := &opening{done: make(chan struct{})}
	go func() {
		defer close(o.done)
		o.dp, o.close, o.err = f.open(reg, log)
		if o.err != nil {
			o.err = fmt.Errorf("opening the %s datapath: %w", f.name, o.err)
		}
	}()
	return o
}

// wait waits for the open to end and returns its error.
func (o *opening) wait() error {
	<-o.done
	return o.err
}

// Close closes the datapath once it is open.
func (o *opening) Close() error {
	if o.wait() != nil {
		return nil
	}
	return o.close()
}

func (o *opening) Name() string {
	if o.wait() != nil {
		return "unopened"
	}
	return o.dp.Name()
}

func (o *opening) SetNode(ctx context.Context, node datapath.Node) error {
	if err := o.wait(); err != nil {
		return err
	}
	return o.dp.SetNode(ctx, node)
}

func (o *opening) Apply(ctx context.Context, upsert []*datapath.Service, remove []string) error {
	if err := o.wait(); err != nil {
		return err
	}
	return o.dp.Apply(ctx, upsert, remove)
}

func (o *opening) Programmed(ctx context.Context) (map[string]*datapath.Service, error) {
	if err := o.wait(); err != nil {
		return nil, err
	}
	return o.dp.Programmed(ctx)
}

// Stamp implements datapath.Stamper; errors.ErrUnsupported when the
// datapath keeps no stamp.
func (o *opening) Stamp(ctx context.Context, stamp []byte) error {
	if err := o.wait(); err != nil {
		return err
	}
	return datapath.Stamp(ctx, o.dp, stamp)
}

// Stamped implements datapath.Stamper like Stamp.
func (o *opening) Stamped(ctx context.Context) ([]byte, error) {
	if err := o.wait(); err != nil {
		return nil, err
	}
	return datapath.Stamped(ctx, o.dp)
}
