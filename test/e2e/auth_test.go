package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/spoke-proxy/spoke/controlplane/app"
	"github.com/spoke-proxy/spoke/controlplane/auth"
	"github.com/spoke-proxy/spoke/datapath/memory"
	"github.com/spoke-proxy/spoke/internal/kubeapi"
	"github.com/spoke-proxy/spoke/nodeagent/agent"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

const audience = "spoke-controlplane"

// selfSigned returns a serving certificate for 127.0.0.1 and its pool.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "spoke-controlplane"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return cert, pool
}

// podToken creates a pod of a ServiceAccount on a node and returns a token
// bound to it.
func podToken(ctx context.Context, t *testing.T, client kubernetes.Interface, ns, sa, pod, node, aud string) string {
	t.Helper()
	token, err := kubeapi.IssuePodToken(ctx, client, kubeapi.PodToken{Namespace: ns, ServiceAccount: sa, Pod: pod, Node: node, Audience: aud})
	if err != nil {
		t.Fatal(err)
	}
	return token
}

func writeToken(t *testing.T, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// authCluster starts a real API server with two nodes and returns a
// context for the test, a client and the control plane's TokenReview
// authenticator for agents of kube-system/spoke-agent.
func authCluster(t *testing.T) (context.Context, kubernetes.Interface, *auth.TokenReviewer) {
	t.Helper()
	api := kubeapi.ForTest(t)
	client, err := kubernetes.NewForConfig(api.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	for i, name := range []string{"node-1", "node-2"} {
		if _, err := client.CoreV1().Nodes().Create(ctx, newNode(name, "zone-1", "192.168.0."+string(rune('1'+i))), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	authn, err := auth.New(auth.Options{Client: client, Audience: audience, ServiceAccounts: []string{"kube-system/spoke-agent"}})
	if err != nil {
		t.Fatal(err)
	}
	return ctx, client, authn
}

func TestAgentsAreBoundToTheirPodsNode(t *testing.T) {
	ctx, client, authn := authCluster(t)
	var err error
	cert, pool := selfSigned(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cp, err := app.New(app.Options{Client: client, GRPCListener: lis, Authenticator: authn,
		GRPCOptions: []grpc.ServerOption{grpc.Creds(credentials.NewServerTLSFromCert(&cert))}})
	if err != nil {
		t.Fatal(err)
	}
	cpCtx, stopCP := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cp.Run(cpCtx) }()
	defer func() {
		stopCP()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	tlsCreds := credentials.NewClientTLSFromCert(pool, "")

	good := writeToken(t, podToken(ctx, t, client, "kube-system", "spoke-agent", "agent-on-node-2", "node-2", audience))
	t.Run("agent gets its pod's node view whatever it claims", func(t *testing.T) {
		conn, err := grpc.NewClient(lis.Addr().String(), append(agent.DialOptions(),
			grpc.WithTransportCredentials(tlsCreds), grpc.WithPerRPCCredentials(&agent.TokenFile{Path: good}))...)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		a, err := agent.New(agent.Options{NodeName: "node-1", Conn: conn, Datapath: memory.New(memory.Options{})})
		if err != nil {
			t.Fatal(err)
		}
		actx, stop := context.WithCancel(ctx)
		adone := make(chan error, 1)
		go func() { adone <- a.Run(actx) }()
		defer func() { stop(); <-adone }()
		eventually(t, "the agent holds a node view", func() error {
			st, err := a.GetState(ctx, &spokev1.GetStateRequest{})
			if err != nil {
				return err
			}
			for _, r := range st.GetCached() {
				if r.GetName() == spokev1.NodeResourceName {
					if n := r.GetNode().GetName(); n != "node-2" {
						t.Fatalf("an agent claiming node-1 from a pod on node-2 got the view of %s", n)
					}
					return nil
				}
			}
			return errNotYet
		})
		nodes, err := cp.Server.ListNodes(ctx, &spokev1.ListNodesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes.GetNodes()) != 1 || nodes.GetNodes()[0].GetNodeName() != "node-2" {
			t.Fatalf("connected nodes: %v", nodes.GetNodes())
		}
	})

	otherSA := writeToken(t, podToken(ctx, t, client, "default", "intruder", "intruder-pod", "node-1", audience))
	wrongAudience := writeToken(t, podToken(ctx, t, client, "kube-system", "spoke-agent", "agent-wrong-aud", "node-1", "kubernetes"))
	for name, creds := range map[string]credentials.PerRPCCredentials{
		"no token":              nil,
		"another account":       &agent.TokenFile{Path: otherSA},
		"token for another aud": &agent.TokenFile{Path: wrongAudience},
		"garbage":               &agent.TokenFile{Path: writeToken(t, "not-a-token")},
	} {
		t.Run("refused: "+name, func(t *testing.T) {
			opts := append(agent.DialOptions(), grpc.WithTransportCredentials(tlsCreds))
			if creds != nil {
				opts = append(opts, grpc.WithPerRPCCredentials(creds))
			}
			conn, err := grpc.NewClient(lis.Addr().String(), opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			s, err := spokev1.NewViewServiceClient(conn).StreamViews(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// The server refuses the stream before it reads anything, so
			// the send may already find it closed (io.EOF); the status
			// comes with Recv either way.
			if err := s.Send(&spokev1.StreamViewsRequest{NodeName: "node-1"}); err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			if _, err := s.Recv(); status.Code(err) != codes.Unauthenticated {
				t.Fatalf("got %v, want Unauthenticated", err)
			}
		})
	}
}
