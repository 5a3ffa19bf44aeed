// Package auth binds an agent's stream to the node the agent runs on. The
// agent presents a projected ServiceAccount token bound to its pod, with
// the control plane's audience. The control plane verifies it, finds the
// pod the token is bound to, and serves that pod's node, whatever node name
// the agent claims.
//
// Tokens of the API server's own service-account issuer are verified
// locally, against the issuer's public keys (IssuerKeys), and their pod is
// read from a watched cache (AgentPods): a herd of agents reconnecting
// costs no API call per agent. Other tokens, or every token when no keys
// are given, are checked with a TokenReview, as the API server would.
//
// Caveats: results are cached per token for a short time, so a deleted pod
// may keep its stream until the cache entry expires or the stream ends.
package auth

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/metadata"

	"github.com/spoke-proxy/spoke/controlplane/server"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Extra keys a pod-bound ServiceAccount token carries.
const (
	podNameKey = "authentication.kubernetes.io/pod-name"
	podUIDKey  = "authentication.kubernetes.io/pod-uid"
)

// ErrUnauthenticated marks a stream that presented no acceptable identity;
// other errors are failures to check it.
var ErrUnauthenticated = server.ErrUnauthenticated

// Options configure an Authenticator.
type Options struct {
	Client kubernetes.Interface
	// Keys verify tokens of the API server's issuer locally; every token
	// is reviewed with a TokenReview when nil.
	Keys *IssuerKeys
	// Pods is the watched cache of the agents' pods; pods are read from
	// the API server when nil, or when a pod is not in it yet.
	Pods *AgentPods
	// Audience the agents' tokens must be issued for.
	Audience string
	// ServiceAccounts are the "namespace/name" accounts agents run as.
	ServiceAccounts []string
	// CacheTTL is how long a reviewed token's node is remembered; default
	// one minute.
	CacheTTL time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Authenticator implements server.Authenticator.
type Authenticator struct {
	opts     Options
	verifier *oidc.IDTokenVerifier // nil without Keys
	checks   *prometheus.CounterVec

	mu    sync.Mutex
	cache map[[32]byte]cached
}

type cached struct {
	node    string
	expires time.Time
}

const maxCached = 100_000

// New returns an Authenticator.
func New(opts Options) (*Authenticator, error) {
	if opts.Client == nil || opts.Audience == "" || len(opts.ServiceAccounts) == 0 {
		return nil, errors.New("auth: client, audience and service accounts are required")
	}
	if opts.CacheTTL == 0 {
		opts.CacheTTL = time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	a := &Authenticator{opts: opts, cache: map[[32]byte]cached{}}
	if opts.Keys != nil {
		a.verifier = opts.Keys.verifier(opts.Audience, opts.Now)
	}
	a.checks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "spoke", Subsystem: "controlplane", Name: "agent_token_checks_total",
		Help: "Agent tokens checked (not served from the cache), by how (local: against the issuer's keys; tokenreview) and result (ok, rejected, error).",
	}, []string{"method", "result"})
	for _, m := range []string{"local", "tokenreview"} {
		for _, r := range []string{"ok", "rejected", "error"} {
			a.checks.WithLabelValues(m, r)
		}
	}
	return a, nil
}

// Describe implements prometheus.Collector.
func (r *Authenticator) Describe(ch chan<- *prometheus.Desc) { r.checks.Describe(ch) }

// Collect implements prometheus.Collector.
func (r *Authenticator) Collect(ch chan<- prometheus.Metric) { r.checks.Collect(ch) }

// NodeName returns the node of the pod the stream's token is bound to.
func (r *Authenticator) NodeName(ctx context.Context) (string, error) {
	token, err := bearerToken(ctx)
	if err != nil {
		return "", err
	}
	key := sha256.Sum256([]byte(token))
	now := r.opts.Now()
	r.mu.Lock()
	if c, ok := r.cache[key]; ok && now.Before(c.expires) {
		r.mu.Unlock()
		return c.node, nil
	}
	r.mu.Unlock()

	method, check := "tokenreview", r.review
	if r.verifier != nil && r.opts.Keys.issues(token) {
		method, check = "local", r.verifyLocally
	}
	node, err := check(ctx, token)
	switch {
	case errors.Is(err, ErrUnauthenticated):
		r.checks.WithLabelValues(method, "rejected").Inc()
		return "", err
	case err != nil:
		r.checks.WithLabelValues(method, "error").Inc()
		return "", err
	}
	r.checks.WithLabelValues(method, "ok").Inc()
	r.mu.Lock()
	if len(r.cache) >= maxCached {
		for k, c := range r.cache {
			if !now.Before(c.expires) {
				delete(r.cache, k)
			}
		}
		if len(r.cache) >= maxCached {
			clear(r.cache)
		}
	}
	r.cache[key] = cached{node: node, expires: now.Add(r.opts.CacheTTL)}
	r.mu.Unlock()
	return node, nil
}

// verifyLocally checks a token of the API server's issuer against its
// keys: signature, issuer, audience, expiry, the ServiceAccount, and the pod
// it is bound to, which must still exist with the same UID (a deleted
// pod's token is refused, as the API server refuses it).
func (r *Authenticator) verifyLocally(ctx context.Context, token string) (string, error) {
	idt, err := r.verifier.Verify(ctx, token)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	var c claims
	if err := idt.Claims(&c); err != nil {
		return "", fmt.Errorf("%w: token claims: %w", ErrUnauthenticated, err)
	}
	ns, sa, ok := serviceAccount(c.Subject)
	if !ok || ns != c.Kubernetes.Namespace || sa != c.Kubernetes.ServiceAccount.Name || !slices.Contains(r.opts.ServiceAccounts, ns+"/"+sa) {
		return "", fmt.Errorf("%w: %q is not an agent service account", ErrUnauthenticated, c.Subject)
	}
	if c.Kubernetes.Pod == nil || c.Kubernetes.Pod.Name == "" || c.Kubernetes.Pod.UID == "" {
		return "", fmt.Errorf("%w: token of %s is not bound to a pod", ErrUnauthenticated, c.Subject)
	}
	node, err := r.podNode(ctx, ns, c.Kubernetes.Pod.Name, c.Kubernetes.Pod.UID)
	if err != nil {
		return "", err
	}
	if c.Kubernetes.Node != nil && c.Kubernetes.Node.Name != node {
		return "", fmt.Errorf("%w: token bound to node %q, its pod runs on %q", ErrUnauthenticated, c.Kubernetes.Node.Name, node)
	}
	return node, nil
}

// review checks a token with a TokenReview.
func (r *Authenticator) review(ctx context.Context, token string) (string, error) {
	tr, err := r.opts.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{r.opts.Audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("reviewing token: %w", err)
	}
	st := tr.Status
	if !st.Authenticated {
		return "", fmt.Errorf("%w: token rejected: %s", ErrUnauthenticated, st.Error)
	}
	if !slices.Contains(st.Audiences, r.opts.Audience) {
		return "", fmt.Errorf("%w: token not issued for audience %q", ErrUnauthenticated, r.opts.Audience)
	}
	ns, sa, ok := serviceAccount(st.User.Username)
	if !ok || !slices.Contains(r.opts.ServiceAccounts, ns+"/"+sa) {
		return "", fmt.Errorf("%w: %q is not an agent service account", ErrUnauthenticated, st.User.Username)
	}
	podName, podUID := single(st.User.Extra[podNameKey]), single(st.User.Extra[podUIDKey])
	if podName == "" || podUID == "" {
		return "", fmt.Errorf("%w: token of %s is not bound to a pod", ErrUnauthenticated, st.User.Username)
	}
	return r.podNode(ctx, ns, podName, podUID)
}

// podNode returns the node of the pod a token is bound to, from the watched
// cache when it holds the pod (with the token's UID), else from the API
// server: a pod created an instant ago may not have reached the cache.
func (r *Authenticator) podNode(ctx context.Context, ns, name, uid string) (string, error) {
	var pod *corev1.Pod
	if r.opts.Pods != nil {
		p, ok, err := r.opts.Pods.get(ctx, ns, name)
		if err != nil {
			return "", err
		}
		if ok && string(p.UID) == uid {
			pod = p
		}
	}
	if pod == nil {
		p, err := r.opts.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) {
				return "", fmt.Errorf("%w: the token's pod %s/%s does not exist", ErrUnauthenticated, ns, name)
			}
			return "", fmt.Errorf("reading the token's pod %s/%s: %w", ns, name, err)
		}
		pod = p
	}
	if string(pod.UID) != uid {
		return "", fmt.Errorf("%w: pod %s/%s was replaced since the token was issued", ErrUnauthenticated, ns, name)
	}
	if pod.Spec.NodeName == "" {
		return "", fmt.Errorf("%w: pod %s/%s is not scheduled", ErrUnauthenticated, ns, name)
	}
	return pod.Spec.NodeName, nil
}

func bearerToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	values := md.Get("authorization")
	if len(values) != 1 {
		return "", fmt.Errorf("%w: no bearer token", ErrUnauthenticated)
	}
	token, ok := strings.CutPrefix(values[0], "Bearer ")
	if !ok || token == "" || len(token) > 16<<10 {
		return "", fmt.Errorf("%w: malformed authorization header", ErrUnauthenticated)
	}
	return token, nil
}

func serviceAccount(username string) (ns, name string, ok bool) {
	rest, ok := strings.CutPrefix(username, "system:serviceaccount:")
	if !ok {
		return "", "", false
	}
	ns, name, ok = strings.Cut(rest, ":")
	return ns, name, ok && ns != "" && name != ""
}

func single(v authenticationv1.ExtraValue) string {
	if len(v) != 1 {
		return ""
	}
	return v[0]
}
