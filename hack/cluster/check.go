package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// checkManifest is the check's workload: a backend on node-2 only, behind a
// NodePort service, and a client pod on node-1.
const checkManifest = `apiVersion: v1
kind: Namespace
metadata:
  name: spoke-check
---
apiVersion: v1
kind: Pod
metadata:
  name: backend
  namespace: spoke-check
  labels: {app: echo}
spec:
  nodeSelector: {kubernetes.io/hostname: node-2}
  containers:
    - name: serve
      image: PROBE_IMAGE
      imagePullPolicy: Never
      args: [serve, ":8080"]
      ports: [{containerPort: 8080}]
      readinessProbe:
        httpGet: {path: /, port: 8080}
        periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: spoke-check
spec:
  nodeSelector: {kubernetes.io/hostname: node-1}
  containers:
    - name: client
      image: PROBE_IMAGE
      imagePullPolicy: Never
      args: [pause]
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: spoke-check
spec:
  type: NodePort
  selector: {app: echo}
  ports:
    - {port: 80, targetPort: 8080}
`

// check runs the check workload and reports each step; it fails if any
// step does.
func (c *cluster) check(ctx context.Context) error {
	start := time.Now()
	file := filepath.Join(c.work, "check.yaml")
	if err := os.WriteFile(file, []byte(strings.ReplaceAll(checkManifest, "PROBE_IMAGE", probeImage)), 0o644); err != nil {
		return err
	}
	// Pods need the namespace's default ServiceAccount, which the
	// controller manager creates.
	if _, err := c.kubectl(ctx, "create", "namespace", "spoke-check"); err != nil {
		return err
	}
	err := waitFor(ctx, time.Minute, "the default ServiceAccount", func() bool {
		_, err := c.kubectl(ctx, "-n", "spoke-check", "get", "serviceaccount", "default")
		return err == nil
	})
	if err != nil {
		return err
	}
	if _, err := c.kubectl(ctx, "apply", "-f", file); err != nil {
		return err
	}
	if _, err := c.kubectl(ctx, "-n", "spoke-check", "wait", "--for=condition=Ready", "pod", "--all", "--timeout=120s"); err != nil {
		return err
	}
	var failed []string
	url := "http://echo.spoke-check.svc.cluster.local/"
	got, err := c.retry(ctx, func() (string, error) {
		return c.kubectl(ctx, "-n", "spoke-check", "exec", "client", "--", "/probe", "get", url)
	})
	failed = report(failed, "pod on node-1 -> "+url+" (backend on node-2)", got, err)
	port, err := c.kubectl(ctx, "-n", "spoke-check", "get", "service", "echo", "-o", "jsonpath={.spec.ports[0].nodePort}")
	if err != nil {
		return err
	}
	for i := 1; i <= c.nodes; i++ {
		addr := "http://" + net.JoinHostPort(nodeAddr(i).String(), port) + "/"
		got, err := c.retry(ctx, func() (string, error) { return httpGet(ctx, addr) })
		failed = report(failed, "host -> NodePort "+addr, got, err)
	}
	if len(failed) == 0 {
		failed = append(failed, c.survive(ctx, port)...)
	}
	fmt.Printf("check: %d failed, took %v after ready\n", len(failed), time.Since(start).Round(time.Millisecond))
	if len(failed) > 0 {
		return fmt.Errorf("check failed: %s", strings.Join(failed, "; "))
	}
	return nil
}

// report prints one check's result; a check passes if the backend answered.
func report(failed []string, what, got string, err error) []string {
	if err == nil && strings.TrimSpace(got) != "backend" {
		err = fmt.Errorf("answered %q, not backend", strings.TrimSpace(got))
	}
	if err != nil {
		fmt.Printf("FAIL %s: %v\n", what, err)
		return append(failed, what)
	}
	fmt.Printf("ok   %s\n", what)
	return failed
}

// retry calls f until it succeeds, for up to 30 s: a new service takes a
// moment to reach every agent and CoreDNS.
func (c *cluster) retry(ctx context.Context, f func() (string, error)) (string, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := f()
		if err == nil || time.Now().After(deadline) {
			return out, err
		}
		select {
		case <-ctx.Done():
			return out, errors.Join(err, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

func httpGet(ctx context.Context, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
