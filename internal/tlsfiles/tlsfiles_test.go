package tlsfiles

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/spoke-proxy/spoke/internal/pki"
	"github.com/spoke-proxy/spoke/internal/wait"
)

// authority is a CA that issues certificates into PEM files.
type authority struct {
	ca  *pki.CA
	pem []byte
}

func newAuthority(t *testing.T, name string) *authority {
	t.Helper()
	ca, err := pki.NewCA(name)
	if err != nil {
		t.Fatal(err)
	}
	return &authority{ca: ca, pem: ca.PEM}
}

// issue writes a certificate for 127.0.0.1 (server or client) and its key
// to certFile and keyFile, replacing them as a rotation would.
func (a *authority) issue(t *testing.T, certFile, keyFile string, server bool) {
	t.Helper()
	certPEM, keyPEM, err := a.ca.Issue(pki.Spec{CN: "spoke-test", Server: server, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	write(t, keyFile, keyPEM)
	write(t, certFile, certPEM)
}

// write replaces a file atomically, as the kubelet swaps a Secret's files.
func write(t *testing.T, path string, b []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// serve runs a gRPC health service with creds on loopback.
func serve(t *testing.T, creds *Credentials) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(grpc.Creds(creds))
	healthpb.RegisterHealthServer(s, health.NewServer())
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	return lis.Addr().String()
}

// call makes one health check over a new connection.
func call(addr string, creds *Credentials) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

// eventually waits up to 10 s for call to return the wanted outcome.
func eventually(t *testing.T, what string, want bool, call func() error) {
	t.Helper()
	wait.For(t, 10*time.Second, what, func() error {
		switch err := call(); {
		case (err == nil) == want:
			return nil
		case err == nil:
			return errors.New("ok=true, want false")
		default:
			return fmt.Errorf("ok=false, want true (%w)", err)
		}
	})
}

func TestRotationWithoutRestart(t *testing.T) {
	dir := t.TempDir()
	f := func(name string) string { return filepath.Join(dir, name) }
	old, next := newAuthority(t, "old CA"), newAuthority(t, "next CA")
	old.issue(t, f("server.crt"), f("server.key"), true)
	write(t, f("client-ca.crt"), old.pem)

	srv, err := Server(Files{Cert: f("server.crt"), Key: f("server.key"), Refresh: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	addr := serve(t, srv)
	cli, err := Client(Files{CA: f("client-ca.crt"), Refresh: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	eventually(t, "client trusting the server's CA", true, func() error { return call(addr, cli) })

	// The client trusts both CAs, then the server moves to the next one:
	// new connections verify throughout, without a restart of either.
	write(t, f("client-ca.crt"), append(append([]byte{}, old.pem...), next.pem...))
	time.Sleep(300 * time.Millisecond)
	next.issue(t, f("server.crt"), f("server.key"), true)
	eventually(t, "server serving the next CA's certificate", true, func() error { return call(addr, cli) })

	// A client that trusts only the old CA no longer accepts the server.
	onlyOld := f("only-old.crt")
	write(t, onlyOld, old.pem)
	stale, err := Client(Files{CA: onlyOld, Refresh: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer stale.Close()
	eventually(t, "client trusting only the old CA", false, func() error { return call(addr, stale) })
	// Its bundle is updated: it accepts the server again.
	write(t, onlyOld, next.pem)
	eventually(t, "client whose bundle was updated", true, func() error { return call(addr, stale) })
}

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	f := func(name string) string { return filepath.Join(dir, name) }
	ca, other := newAuthority(t, "cluster CA"), newAuthority(t, "other CA")
	ca.issue(t, f("server.crt"), f("server.key"), true)
	write(t, f("ca.crt"), ca.pem)
	ca.issue(t, f("agent.crt"), f("agent.key"), false)
	other.issue(t, f("stranger.crt"), f("stranger.key"), false)

	srv, err := Server(Files{Cert: f("server.crt"), Key: f("server.key"), CA: f("ca.crt")})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	addr := serve(t, srv)
	for _, c := range []struct {
		name      string
		cert, key string
		ok        bool
	}{
		{"no client certificate", "", "", false},
		{"certificate of another CA", f("stranger.crt"), f("stranger.key"), false},
		{"certificate of the cluster CA", f("agent.crt"), f("agent.key"), true},
	} {
		cli, err := Client(Files{CA: f("ca.crt"), Cert: c.cert, Key: c.key})
		if err != nil {
			t.Fatal(err)
		}
		if err := call(addr, cli); (err == nil) != c.ok {
			t.Errorf("%s: err=%v, want ok=%v", c.name, err, c.ok)
		}
		cli.Close()
	}
}

func TestBadFilesFailAtStart(t *testing.T) {
	dir := t.TempDir()
	f := func(name string) string { return filepath.Join(dir, name) }
	write(t, f("empty.crt"), []byte("not a certificate"))
	ca := newAuthority(t, "CA")
	ca.issue(t, f("server.crt"), f("server.key"), true)
	for name, err := range map[string]error{
		"server without key":     second(Server(Files{Cert: f("server.crt")})),
		"server missing file":    second(Server(Files{Cert: f("missing.crt"), Key: f("server.key")})),
		"server bad client CA":   second(Server(Files{Cert: f("server.crt"), Key: f("server.key"), CA: f("empty.crt")})),
		"client without CA":      second(Client(Files{})),
		"client bad CA":          second(Client(Files{CA: f("empty.crt")})),
		"client cert, no key":    second(Client(Files{CA: f("server.crt"), Cert: f("server.crt")})),
		"client missing CA":      second(Client(Files{CA: f("missing.crt")})),
		"client bad certificate": second(Client(Files{CA: f("server.crt"), Cert: f("empty.crt"), Key: f("server.key")})),
	} {
		if err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func second(c *Credentials, err error) error {
	if c != nil {
		c.Close()
	}
	return err
}
