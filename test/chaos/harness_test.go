package chaos

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/spoke-proxy/spoke/internal/kubeapi"
	"github.com/spoke-proxy/spoke/internal/loopback"
	"github.com/spoke-proxy/spoke/internal/testnet"
	"github.com/spoke-proxy/spoke/internal/wait"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// long runs every scenario at its full size and length (make
// chaos); without it each runs a shorter form, cheap enough for make test.
var long = flag.Bool("chaos.long", false, "run the scenarios at full length (make chaos)")

// pick returns the long form's value under -chaos.long, the short one
// otherwise.
func pick[T any](short, full T) T {
	if *long {
		return full
	}
	return short
}

// bins holds the control plane's and the agent's binaries, built once
// while the first scenario starts its API server.
var bins struct {
	done         chan struct{}
	err          error
	controlPlane string
	agent        string
	sim          string
}

// shared is the one API server every scenario uses (each in a namespace of
// its own, with nodes of its own), started by the first that asks.
var shared struct {
	once   sync.Once
	server *kubeapi.Server
	err    error
}

func TestMain(m *testing.M) { testnet.Main(withBinaries{m}) }

// withBinaries runs the tests with a folder for the binaries and the API
// server's data, removed afterwards.
type withBinaries struct{ m *testing.M }

func (w withBinaries) Run() int {
	dir, err := os.MkdirTemp("", "spoke-chaos-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bins.controlPlane = filepath.Join(dir, "spoke-controlplane")
	bins.agent = filepath.Join(dir, "spoke-agent")
	bins.sim = filepath.Join(dir, "scale-sim")
	bins.done = make(chan struct{})
	go func() {
		defer close(bins.done)
		cmd := exec.Command("go", "build", "-o", dir+"/",
			"github.com/spoke-proxy/spoke/controlplane/cmd/spoke-controlplane",
			"github.com/spoke-proxy/spoke/nodeagent/cmd/spoke-agent",
			"github.com/spoke-proxy/spoke/scale-sim")
		if out, err := cmd.CombinedOutput(); err != nil {
			bins.err = fmt.Errorf("building the binaries: %w\n%s", err, out)
		}
	}()
	defer func() {
		<-bins.done
		if shared.server != nil {
			shared.server.Stop()
		}
	}()
	return w.m.Run()
}

// binaries waits for the real binaries the scenarios run as processes.
func binaries(t *testing.T) {
	t.Helper()
	<-bins.done
	if bins.err != nil {
		t.Fatal(bins.err)
	}
}

// process is a binary run by a scenario, its output kept in a file.
type process struct {
	t      *testing.T
	name   string
	bin    string
	args   []string
	prefix []string // a command the binary runs under (nsenter, setpriv)
	log    string
	cmd    *exec.Cmd
	exited chan struct{}
	err    error
	starts int
}

func newProcess(t *testing.T, name, bin string, args ...string) *process {
	p := &process{t: t, name: name, bin: bin, args: args, log: filepath.Join(t.TempDir(), name+".log")}
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			t.Logf("--- last lines of %s's log ---\n%s", p.name, strings.Join(lines[max(0, len(lines)-30):], "\n"))
		}
	})
	return p
}

func (p *process) start() {
	p.t.Helper()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	argv := append(append(slices.Clone(p.prefix), p.bin), p.args...)
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		f.Close()
		p.t.Fatal(err)
	}
	p.starts++
	p.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		p.err = cmd.Wait()
		f.Close()
		close(exited)
	}(p.cmd, p.exited)
}

// running reports whether the process has not exited.
func (p *process) running() bool {
	if p.exited == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL: the process cleans nothing up.
func (p *process) kill() { p.signal(syscall.SIGKILL) }

// stop asks the process to end (SIGTERM) and waits.
func (p *process) stop() { p.signal(syscall.SIGTERM) }

func (p *process) signal(sig syscall.Signal) {
	if !p.running() {
		return
	}
	p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// logLines returns the lines of the process's output that hold s.
func (p *process) logLines(s string) []string {
	f, err := os.Open(p.log)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			out = append(out, sc.Text())
		}
	}
	return out
}

// api is the shared kube-apiserver, a client of it, and the namespace of
// the scenario's objects.
type api struct {
	*kubeapi.Server
	client     kubernetes.Interface
	kubeconfig string
	ns         string
}

// startAPI returns the shared API server (starting it the first time) with
// a namespace for the test, whose services and slices go when it ends.
func startAPI(t *testing.T) *api {
	t.Helper()
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		defer cancel()
		shared.server, shared.err = kubeapi.Start(ctx, kubeapi.Options{DataDir: filepath.Join(filepath.Dir(bins.agent), "kubeapi")})
	})
	if shared.err != nil {
		t.Fatalf("starting kube-apiserver: %v", shared.err)
	}
	client, err := kubernetes.NewForConfig(shared.server.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	a := &api{Server: shared.server, client: client, kubeconfig: filepath.Join(t.TempDir(), "kubeconfig"),
		ns: strings.ToLower(strings.TrimPrefix(t.Name(), "Test"))}
	if err := a.WriteKubeconfig(a.kubeconfig); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: a.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		svcs, _ := client.CoreV1().Services(a.ns).List(ctx, metav1.ListOptions{})
		for _, s := range svcs.Items {
			client.CoreV1().Services(a.ns).Delete(ctx, s.Name, metav1.DeleteOptions{})
		}
		client.DiscoveryV1().EndpointSlices(a.ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	})
	return a
}

// controlPlane is the spoke-controlplane binary, on fixed addresses so that
// a restart comes back where agents look for it.
type controlPlane struct {
	*process
	grpcAddr, httpAddr string
	conn               *grpc.ClientConn
}

func newControlPlane(t *testing.T, name, kubeconfig string, extra ...string) *controlPlane {
	t.Helper()
	binaries(t)
	cp := &controlPlane{grpcAddr: loopback.FreeAddr(t), httpAddr: loopback.FreeAddr(t)}
	args := append([]string{"-kubeconfig", kubeconfig, "-insecure", "-agent-auth", "none",
		"-grpc-address", cp.grpcAddr, "-metrics-address", cp.httpAddr,
		"-debounce-window", "20ms", "-debounce-max-delay", "200ms"}, extra...)
	cp.process = newProcess(t, name, bins.controlPlane, args...)
	conn, err := grpc.NewClient(cp.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	cp.conn = conn
	return cp
}

// get asks one of the control plane's HTTP endpoints.
func (cp *controlPlane) get(path string) (int, string) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + cp.httpAddr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// startReady starts the control plane and waits until it is ready.
func (cp *controlPlane) startReady(ctx context.Context) {
	cp.t.Helper()
	cp.start()
	eventually(ctx, cp.t, cp.name+" ready", func() error {
		if !cp.running() {
			return fmt.Errorf("exited: %w", cp.err)
		}
		if code, body := cp.get("/readyz"); code != http.StatusOK {
			return fmt.Errorf("/readyz: %d %s", code, body)
		}
		return nil
	})
}

// metric returns the sum of a metric's samples whose line holds match.
func (cp *controlPlane) metric(name, match string) float64 {
	_, body := cp.get("/metrics")
	return sumMetric(body, name, match)
}

func sumMetric(body, name, match string) float64 {
	var sum float64
	for line := range strings.SplitSeq(body, "\n") {
		if !strings.HasPrefix(line, name) || !strings.Contains(line, match) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

func (cp *controlPlane) view(ctx context.Context, node string) (map[string]string, error) {
	resp, err := spokev1.NewControlPlaneInspectionServiceClient(cp.conn).GetNodeView(ctx, &spokev1.GetNodeViewRequest{NodeName: node})
	if err != nil {
		return nil, err
	}
	return versions(resp.GetResources()), nil
}

func (cp *controlPlane) status(ctx context.Context, node string) (*spokev1.NodeStatus, error) {
	resp, err := spokev1.NewControlPlaneInspectionServiceClient(cp.conn).ListNodes(ctx, &spokev1.ListNodesRequest{PageSize: 1000})
	if err != nil {
		return nil, err
	}
	for _, n := range resp.GetNodes() {
		if n.GetNodeName() == node {
			return n, nil
		}
	}
	return nil, fmt.Errorf("%s not connected", node)
}

func versions(rs []*spokev1.Resource) map[string]string {
	out := map[string]string{}
	for _, r := range rs {
		out[r.GetName()] = r.GetVersion()
	}
	return out
}

// agentProc is the spoke-agent binary.
type agentProc struct {
	*process
	node        string
	statePath   string
	healthzAddr string
	metricsAddr string
	inspect     spokev1.AgentInspectionServiceClient
}

// newAgent prepares an agent of node that talks to the control plane at
// cpAddr; extra flags choose its datapath (memory when none).
func newAgent(t *testing.T, node, cpAddr string, extra ...string) *agentProc {
	t.Helper()
	binaries(t)
	a := &agentProc{node: node, statePath: filepath.Join(t.TempDir(), node+".db"), healthzAddr: loopback.FreeAddr(t), metricsAddr: loopback.FreeAddr(t)}
	inspectAddr := loopback.FreeAddr(t)
	args := append([]string{"-node-name", node, "-controlplane", cpAddr, "-insecure",
		"-state-file", a.statePath, "-healthz-address", a.healthzAddr, "-metrics-address", a.metricsAddr,
		"-inspect-address", inspectAddr}, extra...)
	if !slices.Contains(extra, "-datapath") {
		args = append(args, "-datapath", "memory")
	}
	a.process = newProcess(t, node, bins.agent, args...)
	conn, err := grpc.NewClient(inspectAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	a.inspect = spokev1.NewAgentInspectionServiceClient(conn)
	return a
}

func (a *agentProc) state(ctx context.Context) (*spokev1.GetStateResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return a.inspect.GetState(ctx, &spokev1.GetStateRequest{})
}

// metric returns the sum of the agent's samples of a metric whose line
// holds match, or an error when /metrics does not answer.
func (a *agentProc) metric(name, match string) (float64, error) {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + a.metricsAddr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	return sumMetric(string(b), name, match), nil
}

// healthy reports whether the agent's /healthz answers 200.
func (a *agentProc) healthy() bool {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + a.healthzAddr + "/healthz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// converged returns nil once the agent holds its node's view, compared by
// content (each resource's version is a hash of it), its datapath programs
// exactly the view's services and its last drift check found nothing.
func converged(ctx context.Context, cp *controlPlane, a *agentProc) error {
	view, err := cp.view(ctx, a.node)
	if err != nil {
		return fmt.Errorf("control plane: %w", err)
	}
	st, err := a.state(ctx)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if !st.GetConnected() {
		return fmt.Errorf("%s not connected", a.node)
	}
	if held := versions(st.GetCached()); !maps.Equal(held, view) {
		return fmt.Errorf("%s differs from its view: %s", a.node, diff(held, view))
	}
	prog := slices.Sorted(slices.Values(st.GetProgrammedServices()))
	want := []string{}
	for _, r := range st.GetCached() {
		if r.GetService() != nil {
			want = append(want, r.GetName())
		}
	}
	slices.Sort(want)
	if !slices.Equal(prog, want) {
		return fmt.Errorf("%s programs %d services %v, its view has %d", a.node, len(prog), head(prog), len(want))
	}
	if d := st.GetDrift(); len(d) > 0 {
		return fmt.Errorf("%s drift: %v", a.node, head(d))
	}
	return nil
}

func head(s []string) []string { return s[:min(len(s), 5)] }

// diff describes how held differs from want.
func diff(held, want map[string]string) string {
	var parts []string
	for k, v := range want {
		if held[k] != v {
			parts = append(parts, fmt.Sprintf("%s at %q (want %q)", k, held[k], v))
		}
	}
	for k := range held {
		if _, ok := want[k]; !ok {
			parts = append(parts, "extra "+k)
		}
	}
	slices.Sort(parts)
	return strings.Join(head(parts), ", ")
}

// eventually polls cond until it returns nil or ctx ends.
func eventually(ctx context.Context, t *testing.T, what string, cond func() error) {
	t.Helper()
	if err := within(ctx, 0, cond); err != nil {
		t.Fatalf("timed out waiting until %s: %v", what, err)
	}
}

// within polls cond until it returns nil, for at most d (until ctx ends
// when d is 0), and returns its last error.
func within(ctx context.Context, d time.Duration, cond func() error) error {
	return wait.Until(ctx, d, cond)
}

// Objects.

func node(name, addr string) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelTopologyZone: "zone-1"}},
		Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: addr}}},
	}
}

func service(name, clusterIP string, nodePort int32) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{ClusterIP: clusterIP,
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
	}
	if nodePort != 0 {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = nodePort
	}
	return s
}

func slice(svc string, ips ...string) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: svc + "-1", Labels: map[string]string{
			discoveryv1.LabelServiceName: svc, discoveryv1.LabelManagedBy: "chaos.spoke-proxy.io"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for _, ip := range ips {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	return es
}

// key is a service's name as views carry it.
func (a *api) key(name string) string { return a.ns + "/" + name }

// create makes a service and its slice.
func (a *api) create(ctx context.Context, t *testing.T, svc *corev1.Service, es *discoveryv1.EndpointSlice) *corev1.Service {
	t.Helper()
	s, err := a.client.CoreV1().Services(a.ns).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if es != nil {
		if _, err := a.client.DiscoveryV1().EndpointSlices(a.ns).Create(ctx, es, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// setEndpoints replaces a service's slice's endpoints.
func (a *api) setEndpoints(ctx context.Context, t *testing.T, svc string, ips ...string) {
	t.Helper()
	es, err := a.client.DiscoveryV1().EndpointSlices(a.ns).Get(ctx, svc+"-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	es.Endpoints = slice(svc, ips...).Endpoints
	if _, err := a.client.DiscoveryV1().EndpointSlices(a.ns).Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// addNode creates a node, deleted when the test ends.
func (a *api) addNode(ctx context.Context, t *testing.T, name, addr string) {
	t.Helper()
	if _, err := a.client.CoreV1().Nodes().Create(ctx, node(name, addr), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
}
