package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/spoke-proxy/spoke/controlplane/app"
	"github.com/spoke-proxy/spoke/controlplane/auth"
	"github.com/spoke-proxy/spoke/datapath/memory"
	"github.com/spoke-proxy/spoke/internal/background"
	"github.com/spoke-proxy/spoke/internal/kubeapi"
	"github.com/spoke-proxy/spoke/internal/wait"
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
// context for the test, a client and the control plane's authenticator for
// agents of kube-system/spoke-agent, which verifies tokens against the API
// server's issuer keys, with a watched cache of the agents' pods.
func authCluster(t *testing.T) (context.Context, kubernetes.Interface, *auth.Authenticator) {
	t.Helper()
	_, client := startAPI(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	for i, name := range []string{"node-1", "node-2"} {
		if _, err := client.CoreV1().Nodes().Create(ctx, newNode(name, "zone-1", "192.168.0."+string(rune('1'+i))), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return ctx, client, localAuthenticator(ctx, t, client, nil)
}

// localAuthenticator returns an authenticator that verifies tokens of the
// API server's issuer locally, with the clock now (time.Now when nil).
func localAuthenticator(ctx context.Context, t *testing.T, client kubernetes.Interface, now func() time.Time) *auth.Authenticator {
	t.Helper()
	accounts := []string{"kube-system/spoke-agent"}
	keys, err := auth.DiscoverIssuer(ctx, client.Discovery().RESTClient())
	if err != nil {
		t.Fatal(err)
	}
	pods, err := auth.WatchAgentPods(ctx, client, accounts)
	if err != nil {
		t.Fatal(err)
	}
	if err := pods.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	authn, err := auth.New(auth.Options{Client: client, Audience: audience, ServiceAccounts: accounts, Keys: keys, Pods: pods, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return authn
}

func TestAgentsAreBoundToTheirPodsNode(t *testing.T) {
	ctx, client, local := authCluster(t)
	reviewer, err := auth.New(auth.Options{Client: client, Audience: audience, ServiceAccounts: []string{"kube-system/spoke-agent"}})
	if err != nil {
		t.Fatal(err)
	}
	for name, authn := range map[string]*auth.Authenticator{"local": local, "tokenreview": reviewer} {
		t.Run(name, func(t *testing.T) { testAgentBinding(ctx, t, client, authn) })
	}
}

func testAgentBinding(ctx context.Context, t *testing.T, client kubernetes.Interface, authn *auth.Authenticator) {
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
	defer background.Run(ctx, t, "control plane", cp.Run)()
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
		wait.For(t, settle, "the agent holds a node view", func() error {
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

// countingTransport counts the requests a client makes.
type countingTransport struct {
	rt http.RoundTripper
	n  *atomic.Int64
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.rt.RoundTrip(r)
}

// forge signs payload with a key of its own under the header key ID kid.
func forge(t *testing.T, payload []byte, kid string) string {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	token, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return token
}

// TestAgentTokensVerifiedWithoutAPICalls checks tokens of the API server's
// issuer against its keys: an agent's pod-bound token binds it to its
// pod's node without a single request to the API server, and every token
// that must be refused is, without one either (except one read of the keys
// for a key ID not seen before, and a TokenReview for a token of another
// issuer).
func TestAgentTokensVerifiedWithoutAPICalls(t *testing.T) {
	api, admin := startAPI(t)
	var requests atomic.Int64
	cfg := api.RESTConfig()
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return countingTransport{rt: rt, n: &requests} })
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	tokens := map[string]string{}
	for _, node := range []string{"node-1", "node-2", "node-3"} {
		tokens[node] = podToken(ctx, t, admin, "kube-system", "spoke-agent", "agent-on-"+node, node, audience)
	}
	otherAccount := podToken(ctx, t, admin, "kube-system", "intruder", "intruder-pod", "node-1", audience)
	wrongAudience := podToken(ctx, t, admin, "kube-system", "spoke-agent", "agent-wrong-aud", "node-1", "kubernetes")
	deletedPod := podToken(ctx, t, admin, "kube-system", "spoke-agent", "agent-deleted", "node-1", audience)
	// No kubelet confirms the deletion: remove it at once.
	if err := admin.CoreV1().Pods("kube-system").Delete(ctx, "agent-deleted", *metav1.NewDeleteOptions(0)); err != nil {
		t.Fatal(err)
	}
	header, payload := tokenParts(t, tokens["node-1"])

	authn := localAuthenticator(ctx, t, client, nil)
	expiring := localAuthenticator(ctx, t, client, func() time.Time { return time.Now().Add(2 * time.Hour) })
	withToken := func(token string) context.Context {
		return metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", "Bearer "+token))
	}
	// The informers' lists are done; their watches are open.
	time.Sleep(time.Second)
	requests.Store(0)

	for node, token := range tokens {
		got, err := authn.NodeName(withToken(token))
		if err != nil || got != node {
			t.Errorf("token of the agent on %s: node %q, %v", node, got, err)
		}
	}
	if n := requests.Load(); n != 0 {
		t.Fatalf("binding three agents made %d API requests, want 0", n)
	}

	for name, c := range map[string]struct {
		authn *auth.Authenticator
		token string
	}{
		"another account":   {authn, otherAccount},
		"another audience":  {authn, wrongAudience},
		"expired":           {expiring, tokens["node-2"]},
		"forged, known key": {authn, forge(t, payload, header.KeyID)},
	} {
		requests.Store(0)
		if node, err := c.authn.NodeName(withToken(c.token)); !errors.Is(err, auth.ErrUnauthenticated) {
			t.Errorf("%s: node %q, %v; want unauthenticated", name, node, err)
		}
		if n := requests.Load(); n != 0 {
			t.Errorf("%s: refusing the token made %d API requests, want 0", name, n)
		}
	}

	// A key ID the issuer does not publish may be a rotation: the keys are
	// read again, at most once however many such tokens arrive.
	requests.Store(0)
	for range 5 {
		if _, err := authn.NodeName(withToken(forge(t, payload, "made-up"))); !errors.Is(err, auth.ErrUnauthenticated) {
			t.Errorf("token signed with an unknown key: %v; want unauthenticated", err)
		}
	}
	if n := requests.Load(); n != 1 {
		t.Errorf("five tokens with an unknown key made %d API requests, want 1 (one read of the keys)", n)
	}

	// The pod of a token is gone: refused (the cache no longer holds it,
	// and the API server says it does not exist).
	if _, err := authn.NodeName(withToken(deletedPod)); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Errorf("token of a deleted pod: %v; want unauthenticated", err)
	}
	// A token the issuer did not sign goes to a TokenReview.
	requests.Store(0)
	if _, err := authn.NodeName(withToken("not-a-token")); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Errorf("garbage token: %v; want unauthenticated", err)
	}
	if n := requests.Load(); n != 1 {
		t.Errorf("a token of another issuer made %d API requests, want 1 (a TokenReview)", n)
	}
}

// tokenParts returns a token's JOSE header and its payload.
func tokenParts(t *testing.T, token string) (jose.Header, []byte) {
	t.Helper()
	jws, err := jose.ParseSigned(token, []jose.SignatureAlgorithm{jose.RS256, jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	return jws.Signatures[0].Header, jws.UnsafePayloadWithoutVerification()
}
