// Command local runs Spoke on one machine: a real kube-apiserver and etcd,
// the control plane and three node agents as separate processes, and a
// demo service. It prints one READY line once every agent has programmed
// the demo service, and runs until interrupted, then cleans up.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/spoke-proxy/spoke/internal/kubeapi"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

const nodes = 3

func main() {
	bin := flag.String("bin", "bin", "folder holding spoke-controlplane and spoke-agent")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, log); err != nil {
		log.Error("local cluster failed", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, bin string, log *slog.Logger) error {
	dir, err := os.MkdirTemp("", "spoke-local-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	log.Info("building (first time: several minutes) and starting kube-apiserver and etcd")
	startCtx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	api, err := kubeapi.Start(startCtx, kubeapi.Options{DataDir: filepath.Join(dir, "apiserver")})
	if err != nil {
		return err
	}
	defer api.Stop()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := api.WriteKubeconfig(kubeconfig); err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(api.RESTConfig())
	if err != nil {
		return err
	}

	ports, err := freePorts(2 + 3*nodes)
	if err != nil {
		return err
	}
	cpAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	procs := &processes{log: log, dir: dir}
	defer procs.stopAll()
	if err := procs.start("controlplane", filepath.Join(bin, "spoke-controlplane"),
		"-kubeconfig", kubeconfig, "-grpc-address", cpAddr, "-metrics-address", fmt.Sprintf("127.0.0.1:%d", ports[1]),
		"-debounce-window", "50ms", "-agent-auth", "none"); err != nil {
		return err
	}
	var agentAddrs []string
	for i := 1; i <= nodes; i++ {
		name := fmt.Sprintf("node-%d", i)
		if _, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelTopologyZone: fmt.Sprintf("zone-%d", i)}},
			Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("192.168.100.%d", i)}}},
		}, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("creating node %s: %w", name, err)
		}
		p := ports[2+3*(i-1):]
		inspect := fmt.Sprintf("127.0.0.1:%d", p[0])
		agentAddrs = append(agentAddrs, inspect)
		if err := procs.start(name, filepath.Join(bin, "spoke-agent"),
			"-node-name", name, "-controlplane", cpAddr, "-datapath", "memory", "-token-file", "",
			"-state-file", filepath.Join(dir, name+".db"), "-inspect-address", inspect,
			"-healthz-address", fmt.Sprintf("127.0.0.1:%d", p[1]), "-metrics-address", fmt.Sprintf("127.0.0.1:%d", p[2])); err != nil {
			return err
		}
	}

	svc, err := createDemo(ctx, client)
	if err != nil {
		return err
	}
	waitCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for _, addr := range agentAddrs {
		if err := waitProgrammed(waitCtx, addr, "default/demo"); err != nil {
			return fmt.Errorf("agent %s: %w (logs in %s)", addr, err, dir)
		}
	}
	fmt.Printf("READY controlplane=%s kubeconfig=%s agents=%s\n", cpAddr, kubeconfig, strings.Join(agentAddrs, ","))
	log.Info("demo service programmed on every agent; try:",
		"list", "go tool grpcurl -plaintext "+cpAddr+" list",
		"nodes", "go tool grpcurl -plaintext "+cpAddr+" spoke.v1.ControlPlaneInspectionService/ListNodes",
		"trace", fmt.Sprintf(`go tool grpcurl -plaintext -d '{"protocol":"PROTOCOL_TCP","source":"10.0.0.1:40000","destination":"%s:80"}' %s spoke.v1.AgentInspectionService/TracePacket`, svc.Spec.ClusterIP, agentAddrs[0]))
	select {
	case <-ctx.Done():
	case err := <-procs.exited:
		return err
	}
	log.Info("stopping")
	return nil
}

func createDemo(ctx context.Context, client kubernetes.Interface) (*corev1.Service, error) {
	svc, err := client.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "demo"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Ports: []corev1.ServicePort{{
			Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating the demo service: %w", err)
	}
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "demo-1", Labels: map[string]string{
			discoveryv1.LabelServiceName: "demo", discoveryv1.LabelManagedBy: "local.spoke-proxy.io"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for i := 1; i <= nodes; i++ {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{fmt.Sprintf("10.244.%d.10", i)}, NodeName: ptr.To(fmt.Sprintf("node-%d", i)),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
		})
	}
	if _, err := client.DiscoveryV1().EndpointSlices("default").Create(ctx, es, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("creating the demo endpoints: %w", err)
	}
	return svc, nil
}

// waitProgrammed polls an agent's inspection service until the datapath
// has programmed the service.
func waitProgrammed(ctx context.Context, addr, service string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := spokev1.NewAgentInspectionServiceClient(conn)
	for {
		st, err := client.GetState(ctx, &spokev1.GetStateRequest{})
		if err == nil {
			for _, s := range st.GetProgrammedServices() {
				if s == service {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not programmed: %w (last error: %w)", service, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// processes are the child processes of the demo.
type processes struct {
	log    *slog.Logger
	dir    string
	cmds   []*exec.Cmd
	exited chan error
}

func (p *processes) start(name, path string, args ...string) error {
	if p.exited == nil {
		p.exited = make(chan error, 16)
	}
	logPath := filepath.Join(p.dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("starting %s: %w", name, err)
	}
	p.log.Info("started", "process", name, "pid", cmd.Process.Pid, "log", logPath)
	p.cmds = append(p.cmds, cmd)
	go func() {
		err := cmd.Wait()
		f.Close()
		if err == nil {
			err = errors.New("exit status 0")
		}
		p.exited <- fmt.Errorf("%s exited: %w (log %s)", name, err, logPath)
	}()
	return nil
}

func (p *processes) stopAll() {
	for i := len(p.cmds) - 1; i >= 0; i-- {
		cmd := p.cmds[i]
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	}
	deadline := time.After(10 * time.Second)
	for range p.cmds {
		select {
		case <-p.exited:
		case <-deadline:
			for _, cmd := range p.cmds {
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			}
			return
		}
	}
}

func freePorts(n int) ([]int, error) {
	var out []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, errors.Join(errors.New("finding free ports"), err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}
