package kubeapi

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const (
	// ServiceClusterIPRange is the range ClusterIPs are allocated from.
	ServiceClusterIPRange = "10.96.0.0/16"
	// ServiceAccountIssuer is the issuer of ServiceAccount tokens, and the
	// audience TokenReview checks when a review names none.
	ServiceAccountIssuer = "https://kubernetes.default.svc"
	// AdminUser is the user RESTConfig authenticates as, a member of
	// system:masters.
	AdminUser = "admin"

	// defaultStartTimeout bounds Start when its context has no deadline.
	defaultStartTimeout = 2 * time.Minute
	// stopGrace is how long a process has to exit after SIGTERM.
	stopGrace = 15 * time.Second
)

// Options configure Start. The zero value is ready to use.
type Options struct {
	// Binaries to run. If zero, Start calls Build.
	Binaries Binaries
	// DataDir holds etcd's data, keys, certificates and both processes'
	// logs. If empty, Start creates a temporary directory and Stop removes
	// it; a given directory is kept, but Start clears the etcd data left in
	// it by an earlier run.
	DataDir string
	// ExtraAPIServerArgs are appended to kube-apiserver's command line after
	// the defaults: a single-valued flag given here overrides the default,
	// a list-valued one (--disable-admission-plugins) adds to it.
	ExtraAPIServerArgs []string
	// WithServiceAccounts keeps the ServiceAccount admission plugin on, for
	// a cluster whose kube-controller-manager creates every namespace's
	// "default" ServiceAccount (pods then get their token volume).
	WithServiceAccounts bool
}

// Server is a running etcd and kube-apiserver pair. Its methods are safe for
// concurrent use.
type Server struct {
	// URL is kube-apiserver's address, https://127.0.0.1:PORT.
	URL string
	// EtcdURL is etcd's client address, http://127.0.0.1:PORT.
	EtcdURL string
	// DataDir is the directory holding the data and logs (see Options).
	DataDir string

	bins          Binaries
	apiserverArgs []string
	removeDataDir bool
	token         string
	caData        []byte // kube-apiserver's serving certificate bundle

	mu        sync.Mutex
	etcd      *process
	apiserver *process
	stopped   bool
}

// Start starts etcd and then kube-apiserver on free ports of 127.0.0.1, and
// returns once kube-apiserver is ready and the "default" namespace exists.
// ctx bounds the start (two minutes if it has no deadline), not the
// processes' lifetime: call Stop to end them.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Binaries == (Binaries{}) {
		bins, err := Build(ctx)
		if err != nil {
			return nil, err
		}
		opts.Binaries = bins
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultStartTimeout)
		defer cancel()
	}

	s := &Server{bins: opts.Binaries, DataDir: opts.DataDir}
	if s.DataDir == "" {
		dir, err := os.MkdirTemp("", "spoke-kubeapi-")
		if err != nil {
			return nil, fmt.Errorf("creating data directory: %w", err)
		}
		s.DataDir, s.removeDataDir = dir, true
	} else if err := os.MkdirAll(s.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating data directory: %w", err)
	}

	if err := s.writeCredentials(); err != nil {
		s.Stop()
		return nil, err
	}

	// The ports are free when picked but may be taken before the processes
	// bind them; try again with new ones if that happens.
	const attempts = 3
	for i := 1; ; i++ {
		err := s.startProcesses(ctx, opts.ExtraAPIServerArgs, opts.WithServiceAccounts)
		if err == nil {
			return s, nil
		}
		s.stopProcesses()
		if !errors.Is(err, errPortInUse) || i == attempts {
			s.Stop()
			return nil, err
		}
	}
}

func (s *Server) startProcesses(ctx context.Context, extraArgs []string, serviceAccounts bool) error {
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	s.EtcdURL = "http://127.0.0.1:" + strconv.Itoa(ports[0])
	s.URL = "https://127.0.0.1:" + strconv.Itoa(ports[2])

	// A fresh etcd data directory: one left by a failed attempt records
	// other peer URLs.
	etcdData := filepath.Join(s.DataDir, "etcd")
	if err := os.RemoveAll(etcdData); err != nil {
		return fmt.Errorf("clearing etcd data directory: %w", err)
	}
	etcd, err := startProcess("etcd", filepath.Join(s.DataDir, "etcd.log"), s.bins.Etcd, []string{
		"--data-dir=" + etcdData,
		"--listen-client-urls=" + s.EtcdURL,
		"--listen-peer-urls=http://127.0.0.1:" + strconv.Itoa(ports[1]),
		// A test's etcd does not outlive a machine crash.
		"--unsafe-no-fsync",
	})
	if err != nil {
		return err
	}
	s.etcd = etcd
	if err := waitReady(ctx, etcd, s.etcdReady); err != nil {
		return err
	}

	s.apiserverArgs = append(s.defaultAPIServerArgs(ports[2], serviceAccounts), extraArgs...)
	return s.startAPIServer(ctx)
}

// defaultAPIServerArgs is the smallest command line that gives a working
// API server without controllers: see doc.go for what is missing.
func (s *Server) defaultAPIServerArgs(port int, serviceAccounts bool) []string {
	args := []string{
		"--etcd-servers=" + s.EtcdURL,
		"--bind-address=127.0.0.1",
		// Without it kube-apiserver looks for a non-loopback host address,
		// which a sandbox may not have.
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		// kube-apiserver writes a self-signed serving certificate here, and
		// reuses it on restart.
		"--cert-dir=" + filepath.Join(s.DataDir, "apiserver-certs"),
		"--token-auth-file=" + filepath.Join(s.DataDir, "tokens.csv"),
		"--authorization-mode=Node,RBAC",
		"--service-cluster-ip-range=" + ServiceClusterIPRange,
		"--service-account-issuer=" + ServiceAccountIssuer,
		"--api-audiences=" + ServiceAccountIssuer,
		"--service-account-key-file=" + filepath.Join(s.DataDir, "sa.pub"),
		"--service-account-signing-key-file=" + filepath.Join(s.DataDir, "sa.key"),
		// The "kubernetes" Service's endpoint would be 127.0.0.1, which
		// Endpoints validation rejects; keep it without endpoints.
		"--endpoint-reconciler-type=none",
		// On SIGTERM, close the remaining connections (watches included) 2s
		// after in-flight requests drain instead of after --request-timeout
		// (60s): Restart and Stop take a second or two, not a minute.
		"--shutdown-send-retry-after=true",
		// Node-level DaemonSets (a service proxy among them) run privileged,
		// as in real clusters.
		"--allow-privileged=true",
	}
	if !serviceAccounts {
		// Needs the "default" ServiceAccount that kube-controller-manager
		// creates: without it no Pod could be created.
		args = append(args, "--disable-admission-plugins=ServiceAccount")
	}
	return args
}

func (s *Server) startAPIServer(ctx context.Context) error {
	p, err := startProcess("kube-apiserver", filepath.Join(s.DataDir, "kube-apiserver.log"), s.bins.KubeAPIServer, s.apiserverArgs)
	if err != nil {
		return err
	}
	s.apiserver = p
	if err := waitReady(ctx, p, s.apiserverReady); err != nil {
		return err
	}
	caData, err := os.ReadFile(s.certFile())
	if err != nil {
		return fmt.Errorf("reading kube-apiserver certificate: %w", err)
	}
	s.caData = caData
	return nil
}

// Restart stops kube-apiserver and starts it again with the same etcd, port,
// certificate and credentials, returning once it is ready. Clients made from
// RESTConfig keep working; their watches end and must be re-established.
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("restarting a stopped server")
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultStartTimeout)
		defer cancel()
	}
	if s.apiserver != nil {
		s.apiserver.stop(stopGrace)
		s.apiserver = nil
	}
	if err := s.startAPIServer(ctx); err != nil {
		return fmt.Errorf("restarting: %w", err)
	}
	return nil
}

// Stop stops kube-apiserver and etcd (SIGTERM, then SIGKILL after a grace
// period) and removes the data directory if Start created it. It may be
// called more than once.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	s.stopped = true
	s.stopProcesses()
	if s.removeDataDir {
		_ = os.RemoveAll(s.DataDir)
	}
}

func (s *Server) stopProcesses() {
	if s.apiserver != nil {
		s.apiserver.stop(stopGrace)
		s.apiserver = nil
	}
	if s.etcd != nil {
		s.etcd.stop(stopGrace)
		s.etcd = nil
	}
}

// RESTConfig returns a new client configuration for the admin user, which
// verifies the server's certificate. Its rate limits are high (QPS 200, burst
// 400) so tests that create many objects are not slowed down by the client.
func (s *Server) RESTConfig() *rest.Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	return &rest.Config{
		Host:            s.URL,
		BearerToken:     s.token,
		TLSClientConfig: rest.TLSClientConfig{CAData: slices.Clone(s.caData)},
		QPS:             200,
		Burst:           400,
	}
}

// WriteKubeconfig writes a kubeconfig file for the admin user to path.
func (s *Server) WriteKubeconfig(path string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	const name = "spoke-kubeapi"
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: s.URL, CertificateAuthorityData: slices.Clone(s.caData)}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: s.token}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name, Namespace: "default"}
	cfg.CurrentContext = name
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("writing kubeconfig: %w", err)
	}
	return nil
}

// LogPaths returns the paths of etcd's and kube-apiserver's log files.
func (s *Server) LogPaths() (etcd, apiserver string) {
	return filepath.Join(s.DataDir, "etcd.log"), filepath.Join(s.DataDir, "kube-apiserver.log")
}

func (s *Server) certFile() string {
	return filepath.Join(s.DataDir, "apiserver-certs", "apiserver.crt")
}

// writeCredentials writes the service-account signing key pair and the token
// file that makes the admin token a member of system:masters.
func (s *Server) writeCredentials() error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("generating service-account key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return fmt.Errorf("encoding service-account public key: %w", err)
	}
	token := make([]byte, 16)
	if _, err := rand.Read(token); err != nil {
		return fmt.Errorf("generating admin token: %w", err)
	}
	s.token = hex.EncodeToString(token)

	files := map[string][]byte{
		"sa.key":     pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}),
		"sa.pub":     pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}),
		"tokens.csv": fmt.Appendf(nil, "%s,%s,%s,system:masters\n", s.token, AdminUser, AdminUser),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(s.DataDir, name), content, 0o600); err != nil {
			return fmt.Errorf("writing %s: %w", name, err)
		}
	}
	return nil
}

// etcdReady reports whether etcd answers its health check.
func (s *Server) etcdReady(ctx context.Context) error {
	body, err := get(ctx, http.DefaultClient, s.EtcdURL+"/health", "")
	if err != nil {
		return err
	}
	if !strings.Contains(body, `"health":"true"`) {
		return fmt.Errorf("etcd unhealthy: %s", body)
	}
	return nil
}

// apiserverReady reports whether kube-apiserver is ready, checking its
// certificate against the one it wrote, and whether the "default" namespace
// (created by a loop inside kube-apiserver) exists yet.
func (s *Server) apiserverReady(ctx context.Context) error {
	pemCerts, err := os.ReadFile(s.certFile())
	if err != nil {
		return fmt.Errorf("no serving certificate yet: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemCerts) {
		return errors.New("serving certificate not fully written yet")
	}
	transport := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport}
	if _, err := get(ctx, client, s.URL+"/readyz", s.token); err != nil {
		return err
	}
	_, err = get(ctx, client, s.URL+"/api/v1/namespaces/default", s.token)
	return err
}

// get fetches url and returns the body if the status is 200 OK.
func get(ctx context.Context, client *http.Client, url, token string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return string(body), nil
}

// waitReady polls ready until it succeeds, p exits, or ctx ends.
func waitReady(ctx context.Context, p *process, ready func(context.Context) error) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if exited, err := p.exited(); exited {
			return p.failure(fmt.Errorf("%w: %w", errExited, err))
		}
		err := ready(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return p.failure(fmt.Errorf("not ready: %w (last check: %w)", ctx.Err(), err))
		case <-tick.C:
		}
	}
}

// freePorts returns n distinct TCP ports that were free on 127.0.0.1.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		// Held open until all are picked, so that they differ.
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
