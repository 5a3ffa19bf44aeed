package ebpf

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/internal/testnet"
)

// benchServices returns n ClusterIP services of one TCP port with
// endpoints each, every endpoint a distinct address.
func benchServices(n, endpoints int) []*datapath.Service {
	out := make([]*datapath.Service, 0, n)
	for i := range n {
		s := &datapath.Service{
			Key:        fmt.Sprintf("bench/svc-%d", i),
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})},
			Ports:      []datapath.Port{{Name: "http", Protocol: datapath.TCP, Port: 80, Internal: datapath.Backends{NoEndpoints: datapath.Reject}}},
		}
		for j := range endpoints {
			k := i*endpoints + j
			ep := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(128 + k>>16), byte(k >> 8), byte(k)}), 8080)
			s.Ports[0].Internal.Endpoints = append(s.Ports[0].Internal.Endpoints, datapath.Endpoint{Addr: ep})
		}
		out = append(out, s)
	}
	return out
}

func benchDatapath(b *testing.B) *Datapath {
	var r [4]byte
	rand.Read(r[:])
	return newDatapath(b, Options{
		PinPath:    "/sys/fs/bpf/spoke-bench-" + hex.EncodeToString(r[:]),
		CgroupPath: testnet.Cgroup(b),
	})
}

// BenchmarkProgram10kServices programs 10,000 services with 100,000
// backends into empty maps, then one endpoint change at that size.
func BenchmarkProgram10kServices(b *testing.B) {
	ctx := context.Background()
	d := benchDatapath(b)
	services := benchServices(10000, 10)
	keys := make([]string, len(services))
	for i, s := range services {
		keys[i] = s.Key
	}
	b.Run("from-empty", func(b *testing.B) {
		for b.Loop() {
			if err := d.Apply(ctx, services, nil); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := d.Apply(ctx, nil, keys); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	b.Run("one-endpoint-change", func(b *testing.B) {
		if err := d.Apply(ctx, services, nil); err != nil {
			b.Fatal(err)
		}
		changed := *services[0]
		changed.Ports = []datapath.Port{services[0].Ports[0]}
		eps := append([]datapath.Endpoint(nil), services[0].Ports[0].Internal.Endpoints...)
		changed.Ports[0].Internal.Endpoints = eps
		i := 0
		for b.Loop() {
			// Alternate the last endpoint's port, so every Apply changes it.
			i++
			last := &eps[len(eps)-1]
			last.Addr = netip.AddrPortFrom(last.Addr.Addr(), uint16(8080+i%2))
			if err := d.Apply(ctx, []*datapath.Service{&changed}, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	// Every service changed in one Apply, as when an agent restarts on
	// maps it programmed before and its state file is newer.
	b.Run("every-service-changed", func(b *testing.B) {
		changed := make([]*datapath.Service, len(services))
		for i, s := range services {
			c := *s
			c.Ports = []datapath.Port{s.Ports[0]}
			c.Ports[0].Internal.Endpoints = append([]datapath.Endpoint(nil), s.Ports[0].Internal.Endpoints...)
			changed[i] = &c
		}
		i := 0
		for b.Loop() {
			i++
			for _, c := range changed {
				last := &c.Ports[0].Internal.Endpoints[len(c.Ports[0].Internal.Endpoints)-1]
				last.Addr = netip.AddrPortFrom(last.Addr.Addr(), uint16(8080+i%2))
			}
			if err := d.Apply(ctx, changed, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkConnect compares, in one run, the time of a TCP connection from
// a pod to a service address with one straight to its backend, with 10 and
// with 10,000 services programmed; service/direct is their ratio. The socket is connected to the backend
// once, at connect(): nothing is done per packet.
func BenchmarkConnect(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	lab := testnet.NewForTest(b, testnet.Options{})
	var r [4]byte
	rand.Read(r[:])
	d := newDatapath(b, Options{
		PinPath: "/sys/fs/bpf/spoke-bench-" + hex.EncodeToString(r[:]), CgroupPath: lab.CgroupPath(),
		NetNS: lab.NodeNS().Path(), Devices: []string{testnet.ExternalDevice},
	})
	backend := netip.MustParseAddrPort("10.244.1.5:8080")
	if err := lab.AddBackend(backend, datapath.TCP, false); err != nil {
		b.Fatal(err)
	}
	pod := netip.MustParseAddr("10.244.1.100")
	for _, n := range []int{10, 10000} {
		services := benchServices(n, 10)
		// The service under test has the lab's backend as its only one.
		target := services[n/2]
		target.Ports[0].Internal.Endpoints = []datapath.Endpoint{{Addr: backend}}
		if err := d.Apply(ctx, services, nil); err != nil {
			b.Fatal(err)
		}
		vip := netip.AddrPortFrom(target.ClusterIPs[0], 80)
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			for _, dst := range []netip.AddrPort{backend, vip} {
				if res, err := lab.Repeat(ctx, pod, dst, 1); err != nil || res.Outcome != testnet.Reached {
					b.Fatalf("connecting to %s: %v %v", dst, res, err)
				}
			}
			// Rounds of 100 connections straight to the backend, then 100
			// through the service: the machine's drift hits both alike.
			const perRound = 100
			var direct, service time.Duration
			for b.Loop() {
				for _, c := range []struct {
					dst netip.AddrPort
					sum *time.Duration
				}{{backend, &direct}, {vip, &service}} {
					res, err := lab.Repeat(ctx, pod, c.dst, perRound)
					if err != nil {
						b.Fatal(err)
					}
					*c.sum += res.Elapsed
				}
			}
			conns := float64(b.N * perRound)
			b.ReportMetric(float64(direct.Nanoseconds())/conns, "direct-ns/connect")
			b.ReportMetric(float64(service.Nanoseconds())/conns, "service-ns/connect")
			b.ReportMetric(float64(service)/float64(direct), "service/direct")
		})
	}
}

// TestDefaultMapsHoldALargeCluster programs 10,000 services of 10 endpoints
// (100,000 distinct backends) into maps of the default sizes: a cluster of
// that size must not need tuning flags.
func TestDefaultMapsHoldALargeCluster(t *testing.T) {
	d := newDatapath(t, Options{PinPath: testPinPath(), CgroupPath: testnet.Cgroup(t)})
	if err := d.Apply(context.Background(), benchServices(10000, 10), nil); err != nil {
		t.Fatalf("programming 10,000 services of 10 endpoints with the default map sizes: %v", err)
	}
	got, err := d.Programmed(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 10000 {
		t.Errorf("%d services programmed, want 10000", len(got))
	}
}

// BenchmarkReopen10kServices is an agent restart on maps that hold 10,000
// services of 10 endpoints: open the pinned maps (read back and decoded),
// then apply the same services from the state file.
func BenchmarkReopen10kServices(b *testing.B) {
	ctx := context.Background()
	d := benchDatapath(b)
	if err := d.Apply(ctx, benchServices(10000, 10), nil); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		b.StopTimer()
		services := benchServices(10000, 10)
		b.StartTimer()
		reopened, err := New(d.opts)
		if err != nil {
			b.Fatal(err)
		}
		if err := reopened.Apply(ctx, services, nil); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		reopened.Close()
		b.StartTimer()
	}
}

// BenchmarkOpenPinned measures New on a datapath pinned by an earlier one,
// as a restarted agent opens it: "reused", of the same build, opens the
// maps and programs from their pins (no program is loaded, so the kernel
// verifies none) and attaches them again; "loaded", finding another
// build's digest, loads (verifies) and pins the programs. What the maps
// hold does not matter: New reads none of it.
func BenchmarkOpenPinned(b *testing.B) {
	d := benchDatapath(b)
	if err := d.Apply(context.Background(), benchServices(100, 10), nil); err != nil {
		b.Fatal(err)
	}
	build, err := ebpf.NewMapWithOptions(buildMap, ebpf.MapOptions{PinPath: d.opts.PinPath})
	if err != nil {
		b.Fatal(err)
	}
	defer build.Close()
	for _, reuse := range []bool{true, false} {
		b.Run(map[bool]string{true: "reused", false: "loaded"}[reuse], func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				if !reuse {
					if err := build.Put(uint32(0), [32]byte{1}); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				reopened, err := New(d.opts)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if reopened.reused != reuse {
					b.Fatalf("programs reused: %v, want %v", reopened.reused, reuse)
				}
				reopened.Close()
				b.StartTimer()
			}
		})
	}
}
