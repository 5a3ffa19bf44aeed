// Package auth binds an agent's stream to the node the agent runs on. The
// agent presents a projected ServiceAccount token bound to its pod, with
// the control plane's audience; the control plane checks it with a
// TokenReview, reads the pod the token is bound to, and serves that pod's
// node, whatever node name the agent claims.
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

	"google.golang.org/grpc/metadata"

	"github.com/spoke-proxy/spoke/controlplane/server"
	authenticationv1 "k8s.io/api/authentication/v1"
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

// Options configure a TokenReviewer.
type Options struct {
	Client kubernetes.Interface
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

// TokenReviewer implements server.Authenticator with TokenReview.
type TokenReviewer struct {
	opts  Options
	mu    sync.Mutex
	cache map[[32]byte]cached
}

type cached struct {
	node    string
	expires time.Time
}

const maxCached = 100_000

// New returns a TokenReviewer.
func New(opts Options) (*TokenReviewer, error) {
	if opts.Client == nil || opts.Audience == "" || len(opts.ServiceAccounts) == 0 {
		return nil, errors.New("auth: client, audience and service accounts are required")
	}
	if opts.CacheTTL == 0 {
		opts.CacheTTL = time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &TokenReviewer{opts: opts, cache: map[[32]byte]cached{}}, nil
}

// NodeName returns the node of the pod the stream's token is bound to.
func (r *TokenReviewer) NodeName(ctx context.Context) (string, error) {
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

	node, err := r.review(ctx, token)
	if err != nil {
		return "", err
	}
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

func (r *TokenReviewer) review(ctx context.Context, token string) (string, error) {
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
	pod, err := r.opts.Client.CoreV1().Pods(ns).Get(ctx, podName, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return "", fmt.Errorf("%w: the token's pod %s/%s does not exist", ErrUnauthenticated, ns, podName)
		}
		return "", fmt.Errorf("reading the token's pod %s/%s: %w", ns, podName, err)
	}
	if string(pod.UID) != podUID {
		return "", fmt.Errorf("%w: pod %s/%s was replaced since the token was issued", ErrUnauthenticated, ns, podName)
	}
	if pod.Spec.NodeName == "" {
		return "", fmt.Errorf("%w: pod %s/%s is not scheduled", ErrUnauthenticated, ns, podName)
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
