package healthcheck

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// Service is the health check of one service on this node.
type Service struct {
	// Key is the service's "namespace/name".
	Key string
	// LocalEndpoints counts the node's ready endpoints; serving but
	// terminating ones do not count.
	LocalEndpoints int
}

// Services returns the health checks the services ask for, by port: those
// with a health-check node port, with the count of the node's ready
// endpoints the control plane computed for them.
func Services(svcs []*spokev1.Service) map[uint16]Service {
	out := map[uint16]Service{}
	for _, s := range svcs {
		port := s.GetHealthCheckNodePort()
		if port == 0 || port > 65535 {
			continue
		}
		out[uint16(port)] = Service{
			Key:            s.GetNamespace() + "/" + s.GetName(),
			LocalEndpoints: int(s.GetHealthCheckLocalEndpoints()),
		}
	}
	return out
}

// Options configure a Server.
type Options struct {
	// Host is the address the ports are opened on; "" is every address.
	Host string
	// Healthy reports whether the agent is healthy; an unhealthy agent's
	// checks answer 503 whatever the endpoints. nil is always healthy.
	Healthy func() bool
}

// Server serves the health-check node ports.
type Server struct {
	opts Options

	mu      sync.Mutex
	servers map[uint16]*http.Server
	checks  map[uint16]Service
}

// New returns a Server with no ports open.
func New(opts Options) *Server {
	return &Server{opts: opts, servers: map[uint16]*http.Server{}, checks: map[uint16]Service{}}
}

// Sync makes the open ports those of checks: it opens new ones, closes
// those no longer asked for, and updates the counts the others answer with.
// It returns the ports it could not open; they are tried again next time.
func (s *Server) Sync(checks map[uint16]Service) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks = checks
	for port, srv := range s.servers {
		if _, ok := checks[port]; !ok {
			srv.Close()
			delete(s.servers, port)
		}
	}
	var errs []error
	for port := range checks {
		if _, ok := s.servers[port]; ok {
			continue
		}
		if err := s.open(port); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *Server) open(port uint16) error {
	addr := net.JoinHostPort(s.opts.Host, strconv.Itoa(int(port)))
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("health-check node port %d of %s: %w", port, s.checks[port].Key, err)
	}
	srv := &http.Server{Handler: s.handler(port), ReadHeaderTimeout: 10 * time.Second}
	s.servers[port] = srv
	go srv.Serve(lis)
	return nil
}

// Ports returns the ports being served.
func (s *Server) Ports() []uint16 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]uint16, 0, len(s.servers))
	for p := range s.servers {
		out = append(out, p)
	}
	return out
}

// Close closes every port.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for port, srv := range s.servers {
		srv.Close()
		delete(s.servers, port)
	}
}

// response is kube-proxy's health-check body.
type response struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

func (s *Server) handler(port uint16) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		check := s.checks[port]
		s.mu.Unlock()
		var body response
		body.Service.Namespace, body.Service.Name = splitKey(check.Key)
		body.LocalEndpoints = check.LocalEndpoints
		body.ServiceProxyHealthy = s.opts.Healthy == nil || s.opts.Healthy()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(check.LocalEndpoints))
		if check.LocalEndpoints == 0 || !body.ServiceProxyHealthy {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		json.NewEncoder(w).Encode(body)
	})
}

func splitKey(key string) (namespace, name string) {
	if ns, n, ok := strings.Cut(key, "/"); ok {
		return ns, n
	}
	return "", key
}
