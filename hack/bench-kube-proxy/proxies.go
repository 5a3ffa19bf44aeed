package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	dto "github.com/prometheus/client_model/go"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/spoke-proxy/spoke/internal/countproxy"
)

// The proxies compared.
const (
	nftables = "nftables"
	iptables = "iptables"
	spoke    = "spoke"
)

// metricsAddr is where every proxy serves /metrics inside its node
// (kube-proxy's default port, on the node's loopback).
const metricsAddr = "127.0.0.1:10249"

// running is a proxy running on a node.
type running struct {
	kind string
	node *node
	proc *proc
	fwd  *countproxy.Proxy // to the API server (kube-proxy) or the control plane (agent)
}

// startProxy starts a proxy of kind on n.
func (b *bench) startProxy(kind string, n *node) (*running, error) {
	lis, err := n.listen()
	if err != nil {
		return nil, err
	}
	r := &running{kind: kind, node: n}
	if kind == spoke {
		r.fwd = countproxy.New(lis, b.cpGRPC, 0)
		r.proc, err = b.start(n.proxyCgroup(), n.ns, n.name+"-spoke-agent", filepath.Join(b.bin, "spoke-agent"), b.agentArgs(n, r.fwd.Addr())...)
	} else {
		r.fwd = countproxy.New(lis, b.apiHost, 0)
		var cfg string
		if cfg, err = b.kubeProxyConfig(kind, n, r.fwd.Addr()); err == nil {
			r.proc, err = b.start(n.proxyCgroup(), n.ns, n.name+"-kube-proxy", b.kubeProxy, "--config", cfg)
		}
	}
	if err != nil {
		r.fwd.Close()
		return nil, err
	}
	n.procs = append(n.procs, r.proc)
	return r, nil
}

// agentDatapathFlags are the eBPF flags of a node's agent, the same for
// running it and for cleaning up after it. 10,000 services of 10 endpoints
// each, plus the changed ones, are more distinct backend addresses than the
// default map size holds.
func (b *bench) agentDatapathFlags(n *node) []string {
	return []string{"-datapath", "ebpf", "-bpf-pin-path", b.pinPath(n), "-cgroup-root", n.cgroup, "-bpf-max-backends", "262144"}
}

// pinPath is the node's pin folder, on the run's own bpffs.
func (b *bench) pinPath(n *node) string { return filepath.Join(b.bpffs, n.name) }

func (b *bench) agentArgs(n *node, cp string) []string {
	return append([]string{
		"-node-name", n.name, "-controlplane", cp, "-insecure", "-token-file", "", "-state-file", "",
		"-inspect-address", "127.0.0.1:18001", "-healthz-address", "127.0.0.1:10256", "-metrics-address", metricsAddr,
	}, b.agentDatapathFlags(n)...)
}

// cleanupAgent removes what the node's agent left in the kernel.
func (b *bench) cleanupAgent(n *node) error {
	args := append([]string{"-cleanup"}, b.agentDatapathFlags(n)...)
	if out, err := nsCmd(n.ns, filepath.Join(b.bin, "spoke-agent"), args...).CombinedOutput(); err != nil {
		return fmt.Errorf("removing the datapath of %s: %w: %s", n.name, err, out)
	}
	if err := os.RemoveAll(b.pinPath(n)); err != nil {
		return err
	}
	return nil
}

// kubeProxyConfig writes kube-proxy's configuration and kubeconfig for n
// and returns the configuration's path. Everything not set here is
// kube-proxy's default (minSyncPeriod 1 s, syncPeriod 30 s, ...);
// conntrack.maxPerCore 0 leaves the host-wide conntrack table size alone.
func (b *bench) kubeProxyConfig(mode string, n *node, apiAddr string) (string, error) {
	kubeconfig := filepath.Join(b.dir, n.name+".kubeconfig")
	restCfg := rest.CopyConfig(b.rest)
	restCfg.Host = "https://" + apiAddr
	if err := writeKubeconfig(restCfg, kubeconfig); err != nil {
		return "", err
	}
	path := filepath.Join(b.dir, n.name+".kube-proxy.yaml")
	conf := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: %s
clusterCIDR: %s
hostnameOverride: %s
metricsBindAddress: %s
healthzBindAddress: 127.0.0.1:10256
clientConnection:
  kubeconfig: %s
conntrack:
  maxPerCore: 0
`, mode, endpointNet, n.name, metricsAddr, kubeconfig)
	return path, os.WriteFile(path, []byte(conf), 0o644)
}

// stop stops the proxy and removes what it programmed.
func (b *bench) stopProxy(r *running) error {
	r.proc.stop()
	r.fwd.Close()
	if r.kind == spoke {
		return b.cleanupAgent(r.node)
	}
	return nil
}

// scrape reads the proxy's metrics.
func (r *running) scrape(ctx context.Context) (map[string]*dto.MetricFamily, error) {
	return scrapeURL(ctx, r.node, "http://"+metricsAddr+"/metrics")
}

func scrapeURL(ctx context.Context, n *node, url string) (map[string]*dto.MetricFamily, error) {
	client := httpClient()
	if n != nil {
		client = n.httpClient()
	}
	req, err := newRequest(ctx, url)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return families(resp.Body)
}

// waitSynced waits until a kube-proxy reports its first full sync.
func (r *running) waitSynced(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if r.proc.Exited() {
			return fmt.Errorf("%s exited: %s", r.proc.Name, r.proc.LogTail())
		}
		fams, err := r.scrape(ctx)
		if err == nil && histogramOf(fams, "kubeproxy_sync_full_proxy_rules_duration_seconds").count >= 1 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no full sync after %v", r.proc.Name, timeout)
		}
		time.Sleep(time.Second)
	}
}

// writeKubeconfig writes a kubeconfig for cfg's server and token.
func writeKubeconfig(c *rest.Config, path string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["bench"] = &clientcmdapi.Cluster{Server: c.Host, CertificateAuthorityData: c.CAData}
	cfg.AuthInfos["bench"] = &clientcmdapi.AuthInfo{Token: c.BearerToken}
	cfg.Contexts["bench"] = &clientcmdapi.Context{Cluster: "bench", AuthInfo: "bench"}
	cfg.CurrentContext = "bench"
	return clientcmd.WriteToFile(*cfg, path)
}

func execCmd(path string, args ...string) *exec.Cmd { return exec.Command(path, args...) }

func httpClient() *http.Client { return &http.Client{Timeout: 5 * time.Second} }

func newRequest(ctx context.Context, url string) (*http.Request, error) {
	return http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
}

func addrPort(a fmt.Stringer, port int) string { return a.String() + ":" + strconv.Itoa(port) }
