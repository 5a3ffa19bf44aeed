package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spoke-proxy/spoke/internal/kubeapi"
	"github.com/spoke-proxy/spoke/internal/pki"
	"github.com/spoke-proxy/spoke/scale-sim/synthapi"
)

// The simulated agents authenticate as deploy/'s do: pods of this
// ServiceAccount, with tokens for the control plane's audience.
const (
	agentNamespace = synthapi.AgentNamespace
	agentAccount   = "spoke-agent"
	agentAudience  = "spoke-controlplane"
	// simIssuer is the issuer of the tokens the simulator signs for the
	// synthetic API, as kube-apiserver's --service-account-issuer.
	simIssuer = "https://kubernetes.default.svc.cluster.local"
)

// identity is what authenticates the fleet to the control plane: a serving
// certificate the fleet trusts, and a pod-bound token per node.
type identity struct {
	certFile, keyFile string
	// caPEM is what the serving certificate chains to, for processes
	// that build their own TLS configuration.
	caPEM  []byte
	tls    *tls.Config
	tokens []string
}

// newIdentity issues the control plane's certificate into dir and a token
// for an agent pod on each node, through api.
func newIdentity(ctx context.Context, api apiSource, dir string, nodes []string) (*identity, error) {
	ca, err := pki.NewCA("spoke-sim")
	if err != nil {
		return nil, err
	}
	id := &identity{}
	id.certFile, id.keyFile, err = ca.WritePair(dir, "controlplane", pki.Spec{
		CN: "spoke-controlplane", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true,
	})
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca.PEM) {
		return nil, errors.New("the simulator's CA does not parse")
	}
	id.tls = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	id.caPEM = ca.PEM
	if id.tokens, err = api.AgentTokens(ctx, nodes); err != nil {
		return nil, fmt.Errorf("issuing agent tokens: %w", err)
	}
	return id, nil
}

// agentPod is the pod an agent of node runs in.
func agentPod(node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: agentNamespace, Name: "spoke-agent-" + node},
		Spec: corev1.PodSpec{ServiceAccountName: agentAccount, NodeName: node,
			Containers: []corev1.Container{{Name: "agent", Image: "spoke-agent"}}},
	}
}

// issuer signs tokens as kube-apiserver does: RS256, with the claims of a
// token bound to a pod (kubernetes.io: namespace, serviceaccount, pod,
// node).
type issuer struct {
	key    *rsa.PrivateKey
	signer jose.Signer
	keyID  string
}

func newIssuer() (*issuer, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	const keyID = "scale-sim"
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: key, KeyID: keyID}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, err
	}
	return &issuer{key: key, signer: signer, keyID: keyID}, nil
}

// keys is the public key set the API serves at /openid/v1/jwks.
func (is *issuer) keys() jose.JSONWebKeySet {
	return jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &is.key.PublicKey, KeyID: is.keyID, Algorithm: string(jose.RS256), Use: "sig"}}}
}

// token signs a token for pod, valid for a day.
func (is *issuer) token(pod *corev1.Pod) (string, error) {
	type ref struct {
		Name string `json:"name"`
		UID  string `json:"uid"`
	}
	now := time.Now()
	private := map[string]any{"kubernetes.io": map[string]any{
		"namespace":      pod.Namespace,
		"serviceaccount": ref{Name: pod.Spec.ServiceAccountName, UID: "sa-" + string(pod.UID)},
		"pod":            ref{Name: pod.Name, UID: string(pod.UID)},
		"node":           ref{Name: pod.Spec.NodeName, UID: "node-" + pod.Spec.NodeName},
	}}
	return jwt.Signed(is.signer).Claims(jwt.Claims{
		Issuer:   simIssuer,
		Subject:  "system:serviceaccount:" + pod.Namespace + ":" + pod.Spec.ServiceAccountName,
		Audience: jwt.Audience{agentAudience},
		Expiry:   jwt.NewNumericDate(now.Add(24 * time.Hour)), NotBefore: jwt.NewNumericDate(now), IssuedAt: jwt.NewNumericDate(now),
		ID: string(pod.UID),
	}).Claims(private).Serialize()
}

// AgentTokens creates each node's agent pod and signs a token bound to it
// with an issuer whose keys the synthetic API publishes.
func (a *syntheticAPI) AgentTokens(_ context.Context, nodes []string) ([]string, error) {
	is, err := newIssuer()
	if err != nil {
		return nil, err
	}
	if err := a.s.ServeIssuer(simIssuer, is.keys()); err != nil {
		return nil, err
	}
	tokens := make([]string, len(nodes))
	err = parallel(len(nodes), func(i int) error {
		pod := agentPod(nodes[i])
		if err := a.s.Set(pod); err != nil {
			return err
		}
		var err error
		tokens[i], err = is.token(pod)
		return err
	})
	return tokens, err
}

// AgentTokens creates each node's agent pod in the real API server and
// asks it for a token bound to the pod.
func (a *kubeAPI) AgentTokens(ctx context.Context, nodes []string) ([]string, error) {
	tokens := make([]string, len(nodes))
	err := parallel(len(nodes), func(i int) error {
		var err error
		tokens[i], err = kubeapi.IssuePodToken(ctx, a.client, kubeapi.PodToken{
			Namespace: agentNamespace, ServiceAccount: agentAccount, Pod: "spoke-agent-" + nodes[i],
			Node: nodes[i], Audience: agentAudience, ExpirationSeconds: 24 * 3600,
		})
		return err
	})
	return tokens, err
}

// parallel runs job(0..n-1) on 16 goroutines and returns the first error.
func parallel(n int, job func(int) error) error {
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	next := make(chan int)
	for range 16 {
		wg.Go(func() {
			for i := range next {
				if err := job(i); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return firstErr
}
