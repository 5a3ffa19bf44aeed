package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"
)

// The responders and clients are this program started again inside a
// node's namespaces and cgroup (so that the eBPF agent's socket hooks
// apply to the clients, as to a pod's), with one of these subcommands:
//
//	respond -port P                    answer every connection with the address it reached
//	probe -wait -dst ADDR -timeout D   connect until an endpoint answers; print when
//	probe -dst SVC -direct EP -n N     time N connects and answers each way
const (
	respondCommand = "respond"
	probeCommand   = "probe"
)

// subcommand runs a subcommand if args name one.
func subcommand(args []string) (bool, error) {
	if len(args) == 0 {
		return false, nil
	}
	switch args[0] {
	case respondCommand:
		fs := flag.NewFlagSet(respondCommand, flag.ContinueOnError)
		port := fs.Int("port", responderPort, "TCP port")
		if err := fs.Parse(args[1:]); err != nil {
			return true, err
		}
		return true, respond(*port)
	case probeCommand:
		return true, probeMain(args[1:])
	}
	return false, nil
}

// respond writes, on every connection, the local address it was reached
// on, then closes it.
func respond(port int) error {
	lis, err := net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", port))
	if err != nil {
		return err
	}
	for {
		c, err := lis.Accept()
		if err != nil {
			return err
		}
		go func() {
			fmt.Fprintf(c, "%s\n", c.LocalAddr())
			c.Close()
		}()
	}
}

// probeResult is what a probe prints, one JSON line.
type probeResult struct {
	// At is when the first connection reached an endpoint (-wait).
	At time.Time `json:"at,omitzero"`
	// Medians of -n connections through the service and directly.
	ServiceConnect time.Duration `json:"service_connect,omitempty"`
	DirectConnect  time.Duration `json:"direct_connect,omitempty"`
	ServiceRTT     time.Duration `json:"service_rtt,omitempty"`
	DirectRTT      time.Duration `json:"direct_rtt,omitempty"`
}

func probeMain(args []string) error {
	fs := flag.NewFlagSet(probeCommand, flag.ContinueOnError)
	wait := fs.Bool("wait", false, "connect until an endpoint answers")
	dst := fs.String("dst", "", "service address and port")
	direct := fs.String("direct", "", "an endpoint's address and port")
	n := fs.Int("n", 200, "connections each way")
	timeout := fs.Duration("timeout", time.Minute, "how long -wait may take")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var res probeResult
	var err error
	if *wait {
		res.At, err = waitReachable(*dst, *timeout)
	} else {
		res, err = connectTimes(*dst, *direct, *n)
	}
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// exchange connects to addr and reads the answer, returning the connect
// time, the time to the answer, and the endpoint that answered.
func exchange(addr string, timeout time.Duration) (connect, rtt time.Duration, from netip.AddrPort, err error) {
	start := time.Now()
	c, err := net.DialTimeout("tcp4", addr, timeout)
	if err != nil {
		return 0, 0, from, err
	}
	defer c.Close()
	connect = time.Since(start)
	c.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, 0, from, err
	}
	from, err = netip.ParseAddrPort(strings.TrimSpace(line))
	return connect, time.Since(start), from, err
}

// waitReachable connects to dst every 20 ms until an endpoint answers.
func waitReachable(dst string, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		_, _, from, err := exchange(dst, 200*time.Millisecond)
		if err == nil && endpointNet.Contains(from.Addr()) {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("%s not reachable after %v (last: %w)", dst, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// connectTimes alternates n connections through the service and n direct
// to an endpoint, and returns the medians.
func connectTimes(svc, direct string, n int) (probeResult, error) {
	var sc, sr, dc, dr []float64
	for range n {
		for _, t := range []struct {
			addr  string
			c, rt *[]float64
		}{{svc, &sc, &sr}, {direct, &dc, &dr}} {
			c, rt, _, err := exchange(t.addr, time.Second)
			if err != nil {
				return probeResult{}, fmt.Errorf("%s: %w", t.addr, err)
			}
			*t.c = append(*t.c, float64(c))
			*t.rt = append(*t.rt, float64(rt))
		}
	}
	return probeResult{
		ServiceConnect: time.Duration(median(sc)), DirectConnect: time.Duration(median(dc)),
		ServiceRTT: time.Duration(median(sr)), DirectRTT: time.Duration(median(dr)),
	}, nil
}

// runProbe runs a probe on node n, as a pod there, and returns its result.
func (b *bench) runProbe(n *node, args ...string) (probeResult, error) {
	var out bytes.Buffer
	cmd := nsCmd(n.ns, os.Args[0], append([]string{probeCommand}, args...)...)
	cmd.Stdout = &out
	p, err := b.startCmd(n.podCgroup(), n.name+"-probe", cmd)
	if err != nil {
		return probeResult{}, err
	}
	<-p.Done()
	var res probeResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		return res, errors.New("probe on " + n.name + " failed: " + p.LogTail())
	}
	return res, nil
}
