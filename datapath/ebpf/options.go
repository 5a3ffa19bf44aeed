package ebpf

import (
	"fmt"
	"path/filepath"

	"github.com/spoke-proxy/spoke/datapath"
)

// TCMode chooses how the tc programs are attached to devices.
type TCMode uint8

// Ways to attach the tc programs.
const (
	// TCAuto uses tcx links where the kernel has them (6.6 and later) and
	// clsact filters otherwise.
	TCAuto TCMode = iota
	// TCX requires tcx links.
	TCX
	// TCClsact uses clsact qdisc filters, even where tcx exists.
	TCClsact
)

func (m TCMode) String() string { return datapath.Name(m, "TCMode", tcModeNames[:]) }

var tcModeNames = [...]string{TCAuto: "auto", TCX: "tcx", TCClsact: "clsact"}

// Defaults for Options.
const (
	DefaultPinPath    = "/sys/fs/bpf/spoke"
	DefaultCgroupPath = "/sys/fs/cgroup"
)

// Options configure an eBPF datapath. The zero value is usable: every field
// has a default.
type Options struct {
	// PinPath is the bpffs folder that holds the maps and links, so that
	// they outlive the agent. DefaultPinPath when empty; bpffs is mounted at
	// /sys/fs/bpf if it is not.
	PinPath string
	// CgroupPath is the cgroup v2 folder whose sockets (and its
	// descendants') are load balanced. DefaultCgroupPath when empty, the
	// usual place on a Kubernetes node; hybrid hosts mount cgroup v2
	// elsewhere, for example /sys/fs/cgroup/unified.
	CgroupPath string
	// Devices are the interfaces on which traffic from outside the node
	// arrives. When empty, the interfaces that hold the node's addresses
	// are used, as SetNode finds them.
	Devices []string
	// NetNS is the network namespace file (for example /proc/1/ns/net or a
	// file under /run/netns) in which Devices are found; the caller's when
	// empty.
	NetNS string
	// TC chooses tcx links or clsact filters.
	TC TCMode
	// PodDevices are patterns (path.Match syntax) of the interfaces the
	// node's pods send from, in NetNS. The kernel runs no socket hook for
	// SCTP, so SCTP from pods to a service is balanced per packet on these
	// devices; they are attached to as they appear, and an external device
	// is never one. None when empty: SCTP from pods then reaches service
	// addresses untranslated. (SCTP the node itself sends is balanced on
	// the external device it leaves by.)
	PodDevices []string
	// OnError, if set, is called with what fails in the background:
	// following pod devices and attaching to them.
	OnError func(error)

	// Map sizes.
	//
	// MaxServices bounds the services (16384).
	MaxServices int
	// MaxFrontends bounds the addresses services answer on: one entry per
	// (address, port) and two per node port (65536).
	MaxFrontends int
	// MaxBackends bounds distinct endpoint addresses (262144; the map
	// allocates entries as they are used).
	MaxBackends int
	// MaxEndpoints bounds endpoints summed over every service port's
	// backend sets, plus two per backend set (262144).
	MaxEndpoints int
	// MaxSourceRanges bounds loadBalancerSourceRanges entries (16384).
	MaxSourceRanges int
	// MaxConnections bounds the connection table of traffic from outside;
	// the least recently used entries are evicted (262144).
	MaxConnections int
	// MaxAffinity bounds ClientIP affinity entries, least recently used
	// first out (65536).
	MaxAffinity int
	// MaxSockets bounds the per-socket reverse translations used by
	// recvmsg and getpeername, least recently used first out (262144).
	MaxSockets int

	// SNATPortMin and SNATPortMax bound the node ports used as sources
	// when traffic from outside is sent to a backend on another node
	// (61000-65535, above Linux's default ephemeral range).
	SNATPortMin, SNATPortMax uint16

	// OnFull, if set, is called with a map's name whenever Apply is
	// refused because the map would be full: a hook for a metric.
	OnFull func(mapName string)
}

func (o Options) withDefaults() (Options, error) {
	if o.PinPath == "" {
		o.PinPath = DefaultPinPath
	}
	if o.CgroupPath == "" {
		o.CgroupPath = DefaultCgroupPath
	}
	if !filepath.IsAbs(o.PinPath) || !filepath.IsAbs(o.CgroupPath) {
		return o, fmt.Errorf("pin path %q and cgroup path %q must be absolute", o.PinPath, o.CgroupPath)
	}
	sizes := []struct {
		v   *int
		def int
	}{
		{&o.MaxServices, 16384},
		{&o.MaxFrontends, 65536},
		{&o.MaxBackends, 262144},
		{&o.MaxEndpoints, 262144},
		{&o.MaxSourceRanges, 16384},
		{&o.MaxConnections, 262144},
		{&o.MaxAffinity, 65536},
		{&o.MaxSockets, 262144},
	}
	for _, s := range sizes {
		if *s.v < 0 {
			return o, fmt.Errorf("negative map size %d", *s.v)
		}
		if *s.v == 0 {
			*s.v = s.def
		}
	}
	for _, p := range o.PodDevices {
		if _, err := filepath.Match(p, ""); err != nil {
			return o, fmt.Errorf("pod device pattern %q: %w", p, err)
		}
	}
	if o.OnError == nil {
		o.OnError = func(error) {}
	}
	if o.SNATPortMin == 0 && o.SNATPortMax == 0 {
		o.SNATPortMin, o.SNATPortMax = 61000, 65535
	}
	if o.SNATPortMin == 0 || o.SNATPortMax < o.SNATPortMin {
		return o, fmt.Errorf("SNAT port range %d-%d", o.SNATPortMin, o.SNATPortMax)
	}
	return o, nil
}

// mapSizes returns each map's number of entries.
func (o Options) mapSizes() map[string]int {
	return map[string]int{
		lbMapServices:   o.MaxFrontends,
		lbMapSlots:      o.MaxEndpoints,
		lbMapBackends:   o.MaxBackends,
		lbMapSrcRanges:  o.MaxSourceRanges,
		lbMapNodes:      256,
		lbMapDevices:    256,
		lbMapConfig:     1,
		lbMapAffinity:   o.MaxAffinity,
		lbMapConntrack:  o.MaxConnections,
		lbMapRevnat:     o.MaxConnections,
		lbMapSockRevnat: o.MaxSockets,
		lbMapSvcMeta:    o.MaxServices,
		lbMapPortMeta:   o.MaxFrontends,
		lbMapSvcAddrs:   o.MaxFrontends,
	}
}
