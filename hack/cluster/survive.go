package main

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// holdFor is how long the long-lived connections of the restart check
// last; the restarts must be over well before.
const holdFor = 90 * time.Second

// holdResult is what one long-lived connection saw.
type holdResult struct {
	what string
	out  string
	err  error
}

// survive checks that long-lived connections through a service keep
// working, on their first TCP connection, while the agent pod of the
// client's node and then every control-plane pod are deleted and come back:
// one from the client pod on node-1 to the ClusterIP service, one from the
// host to the NodePort on node-1 (the backend is on node-2). It reports the
// time each restart took to be Ready and fails if a request failed or a
// connection was replaced.
func (c *cluster) survive(ctx context.Context, nodePort string) []string {
	var failed []string
	results := make(chan holdResult, 2)
	dur := holdFor.String()
	go func() {
		out, err := c.kubectl(ctx, "-n", "spoke-check", "exec", "client", "--", "/probe", "hold", "http://echo.spoke-check.svc.cluster.local/", dur)
		results <- holdResult{"pod on node-1 -> ClusterIP", out, err}
	}()
	go func() {
		url := "http://" + net.JoinHostPort(nodeAddr(1).String(), nodePort) + "/"
		out, err := exec.CommandContext(ctx, filepath.Join(c.work, "images", "probe"), "hold", url, dur).CombinedOutput()
		results <- holdResult{"host -> NodePort on node-1", string(out), err}
	}()
	start := time.Now()
	time.Sleep(3 * time.Second) // both connections open before the first restart
	restarts := []struct{ what, selector, node string }{
		{"agent pod on node-1", "app.kubernetes.io/name=spoke-agent", "node-1"},
		{"every control-plane pod", "app.kubernetes.io/name=spoke-controlplane", ""},
	}
	for _, r := range restarts {
		took, err := c.restartPods(ctx, r.selector, r.node)
		if err != nil {
			fmt.Printf("FAIL restart %s: %v\n", r.what, err)
			failed = append(failed, "restart "+r.what)
			continue
		}
		fmt.Printf("ok   restart %s: deleted, replaced and Ready in %v\n", r.what, took.Round(100*time.Millisecond))
	}
	got, err := c.retry(ctx, func() (string, error) {
		return c.kubectl(ctx, "-n", "spoke-check", "exec", "client", "--", "/probe", "get", "http://echo.spoke-check.svc.cluster.local/")
	})
	failed = report(failed, "a new connection from the pod on node-1 after the restarts", got, err)
	if time.Since(start) > holdFor-10*time.Second {
		fmt.Printf("FAIL the restarts took %v, too close to the connections' %v to tell\n", time.Since(start).Round(time.Second), holdFor)
		failed = append(failed, "restarts within the hold")
	}
	for range 2 {
		r := <-results
		what := r.what + " held across both restarts"
		if r.err != nil {
			fmt.Printf("FAIL %s: %s %v\n", what, strings.TrimSpace(r.out), r.err)
			failed = append(failed, what)
			continue
		}
		fmt.Printf("ok   %s: %s\n", what, strings.TrimSpace(r.out))
	}
	return failed
}

// restartPods deletes the kube-system pods matching selector (on node, if
// given) and waits until as many others are Ready in their place; it
// returns how long that took.
func (c *cluster) restartPods(ctx context.Context, selector, node string) (time.Duration, error) {
	list := func() (names []string, ready int, err error) {
		args := []string{"-n", "kube-system", "get", "pods", "-l", selector,
			"-o", `jsonpath={range .items[*]}{.metadata.name} {.metadata.deletionTimestamp} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`}
		if node != "" {
			args = append(args, "--field-selector", "spec.nodeName="+node)
		}
		out, err := c.kubectl(ctx, args...)
		if err != nil {
			return nil, 0, err
		}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 {
				continue
			}
			names = append(names, f[0])
			if len(f) == 2 && f[1] == "True" { // no deletion timestamp
				ready++
			}
		}
		return names, ready, nil
	}
	old, _, err := list()
	if err != nil {
		return 0, err
	}
	if len(old) == 0 {
		return 0, fmt.Errorf("no pod matches %s", selector)
	}
	start := time.Now()
	if _, err := c.kubectl(ctx, append([]string{"-n", "kube-system", "delete", "pod", "--wait=false"}, old...)...); err != nil {
		return 0, err
	}
	err = waitFor(ctx, 2*time.Minute, "replacements of "+strings.Join(old, ", "), func() bool {
		names, ready, err := list()
		if err != nil || ready < len(old) {
			return false
		}
		return !slices.ContainsFunc(names, func(n string) bool { return slices.Contains(old, n) })
	})
	return time.Since(start), err
}
