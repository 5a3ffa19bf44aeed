package main

import (
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/template"
	"time"

	"github.com/spoke-proxy/spoke/internal/pki"
)

//go:embed coredns.yaml
var corednsManifest string

// controlPlanePort is the Spoke control plane's gRPC port on the nodes and
// on its front address on the host.
const controlPlanePort = "18000"

// runtimeKustomization is the overlay make cluster applies: hack/cluster/
// overlay (deploy/ and the per-node settings) plus this cluster's image
// tags, addresses, CA and control-plane certificate.
const runtimeKustomization = `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {{.Overlay}}
images:
  - name: ghcr.io/spoke-proxy/spoke-controlplane
    newTag: "{{.ControlPlaneTag}}"
  - name: ghcr.io/spoke-proxy/spoke-agent
    newTag: "{{.AgentTag}}"
secretGenerator:
  - name: spoke-controlplane-tls
    namespace: kube-system
    type: kubernetes.io/tls
    files: [tls.crt, tls.key]
    options:
      disableNameSuffixHash: true
patches:
  - patch: |-
      apiVersion: v1
      kind: ConfigMap
      metadata:
        name: spoke-config
        namespace: kube-system
      data:
        apiserver-host: "{{.APIHost}}"
        apiserver-port: "{{.APIPort}}"
        controlplane-address: "{{.ControlPlane}}"
        ca.crt: |
{{.CA}}
`

// writeDeployment writes the runtime overlay into dir.
func (c *cluster) writeDeployment(dir string, spokeTars []string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	overlay, err := filepath.Rel(dir, filepath.Join(c.repo, "hack", "cluster", "overlay"))
	if err != nil {
		return err
	}
	cpTag, err := imageTag(spokeTars, "ghcr.io/spoke-proxy/spoke-controlplane")
	if err != nil {
		return err
	}
	agentTag, err := imageTag(spokeTars, "ghcr.io/spoke-proxy/spoke-agent")
	if err != nil {
		return err
	}
	ips := []net.IP{hostAddr.Addr().AsSlice()}
	for i := 1; i <= c.nodes; i++ {
		ips = append(ips, nodeAddr(i).AsSlice())
	}
	if _, _, err := c.ca.WritePair(dir, "tls", pki.Spec{
		CN: "spoke-controlplane", Server: true, IPs: ips,
		DNS: []string{"spoke-controlplane", "spoke-controlplane.kube-system.svc", "spoke-controlplane.kube-system.svc.cluster.local"},
	}); err != nil {
		return err
	}
	var indented strings.Builder
	for line := range strings.SplitSeq(strings.TrimSpace(string(c.ca.PEM)), "\n") {
		indented.WriteString("          " + line + "\n")
	}
	return writeTemplate(filepath.Join(dir, "kustomization.yaml"), runtimeKustomization, map[string]string{
		"Overlay": overlay, "ControlPlaneTag": cpTag, "AgentTag": agentTag,
		"APIHost": hostAddr.Addr().String(), "APIPort": c.apiPort,
		"ControlPlane": net.JoinHostPort(hostAddr.Addr().String(), controlPlanePort),
		"CA":           strings.TrimRight(indented.String(), "\n"),
	})
}

// deploy applies Spoke (kubectl apply -k, as a user would) and CoreDNS.
func (c *cluster) deploy(ctx context.Context, spokeTars []string) error {
	dir := filepath.Join(c.work, "deploy")
	if err := c.writeDeployment(dir, spokeTars); err != nil {
		return err
	}
	if _, err := c.kubectl(ctx, "apply", "--server-side", "-k", dir); err != nil {
		return err
	}
	dns := strings.ReplaceAll(corednsManifest, "COREDNS_IMAGE", corednsImage)
	dnsFile := filepath.Join(dir, "coredns.yaml")
	if err := os.WriteFile(dnsFile, []byte(dns), 0o644); err != nil {
		return err
	}
	_, err := c.kubectl(ctx, "apply", "--server-side", "-f", dnsFile)
	return err
}

// waitReady waits for every node, Spoke's Deployment and DaemonSet and
// CoreDNS to be Ready.
func (c *cluster) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := fmt.Sprintf("--timeout=%ds", int(timeout.Seconds()))
	steps := [][]string{
		{"wait", "--for=condition=Ready", "node", "--all", deadline},
		{"-n", "kube-system", "rollout", "status", "daemonset/spoke-agent", deadline},
		{"-n", "kube-system", "rollout", "status", "deployment/spoke-controlplane", deadline},
		{"-n", "kube-system", "rollout", "status", "deployment/coredns", deadline},
	}
	for _, s := range steps {
		if _, err := c.kubectl(ctx, s...); err != nil {
			return err
		}
	}
	return nil
}

// kubectl runs kubectl as the admin and returns its standard output.
func (c *cluster) kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.bins.kubectl, append([]string{"--kubeconfig", c.kubeconfig}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w\n%s%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String(), nil
}

func writeTemplate(path, text string, data any) error {
	t, err := template.New(filepath.Base(path)).Option("missingkey=error").Parse(text)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	if err := t.Execute(&b, data); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

// waitFor polls cond every 200 ms until it holds, ctx ends or timeout
// passes.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}
