package auth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
	"k8s.io/client-go/rest"
)

// The API server publishes its service-account issuer's discovery document
// and public keys at these paths (ServiceAccountIssuerDiscovery).
const (
	discoveryPath = "/.well-known/openid-configuration"
	keysPath      = "/openid/v1/jwks"
)

// signingAlgs are the algorithms kube-apiserver signs tokens with (RSA or
// ECDSA keys, as --service-account-signing-key-file holds).
var signingAlgs = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.ES256, jose.ES384, jose.ES512}

// IssuerKeys verifies tokens of the API server's service-account issuer
// with its public keys, read through the API server (never from the
// issuer's public URL, which the control plane may not reach). Keys are
// read once and again when a token names a key not yet known (a rotation),
// at most once per MinRefresh, so tokens with made-up key IDs cost no more
// than one API call per MinRefresh.
type IssuerKeys struct {
	// Issuer is the "iss" of the tokens these keys sign.
	Issuer string
	// MinRefresh is the shortest time between two reads of the keys.
	MinRefresh time.Duration

	api rest.Interface
	now func() time.Time

	fetchMu sync.Mutex // one read of the keys at a time
	fetched time.Time  // of the last read for an unknown key; guarded by fetchMu

	mu   sync.Mutex
	keys []jose.JSONWebKey
}

// DiscoverIssuer reads the issuer and its keys through the API server that
// api talks to. It fails when the API server does not publish them (the
// ServiceAccountIssuerDiscovery endpoints are not reachable, or RBAC does
// not allow reading them).
func DiscoverIssuer(ctx context.Context, api rest.Interface) (*IssuerKeys, error) {
	body, err := api.Get().AbsPath(discoveryPath).DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", discoveryPath, err)
	}
	var doc struct {
		Issuer string `json:"issuer"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", discoveryPath, err)
	}
	if doc.Issuer == "" {
		return nil, fmt.Errorf("%s names no issuer", discoveryPath)
	}
	k := &IssuerKeys{Issuer: doc.Issuer, MinRefresh: 10 * time.Second, api: api, now: time.Now}
	if _, err := k.refresh(ctx, true); err != nil {
		return nil, err
	}
	return k, nil
}

// issues reports whether token claims to come from this issuer. It reads
// the claim without verifying anything: it only chooses how the token is
// verified.
func (k *IssuerKeys) issues(token string) bool {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return false
	}
	var claims struct {
		Issuer string `json:"iss"`
	}
	return json.Unmarshal(payload, &claims) == nil && claims.Issuer == k.Issuer
}

// VerifySignature implements oidc.KeySet.
func (k *IssuerKeys) VerifySignature(ctx context.Context, token string) ([]byte, error) {
	jws, err := jose.ParseSigned(token, signingAlgs)
	if err != nil {
		return nil, fmt.Errorf("malformed token: %w", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, errors.New("token has more than one signature")
	}
	kid := jws.Signatures[0].Header.KeyID
	k.mu.Lock()
	keys := k.keys
	k.mu.Unlock()
	if payload, known, err := verifyWith(jws, keys, kid); known {
		return payload, err
	}
	// A key not seen yet: the issuer may have rotated its keys.
	keys, err = k.refresh(ctx, false)
	if err != nil {
		return nil, err
	}
	if payload, known, err := verifyWith(jws, keys, kid); known {
		return payload, err
	}
	return nil, fmt.Errorf("token signed with key %q, which the issuer does not publish", kid)
}

// verifyWith checks jws against the key named kid (every key when the
// token names none). known is false when no key could have signed it.
func verifyWith(jws *jose.JSONWebSignature, keys []jose.JSONWebKey, kid string) (payload []byte, known bool, err error) {
	for i := range keys {
		if kid != "" && keys[i].KeyID != kid {
			continue
		}
		known = true
		if payload, err := jws.Verify(&keys[i]); err == nil {
			return payload, true, nil
		}
	}
	if known {
		return nil, true, errors.New("token signature does not verify")
	}
	return nil, false, nil
}

// refresh reads the keys again unless they were read less than MinRefresh
// ago (or force), and returns the keys held.
func (k *IssuerKeys) refresh(ctx context.Context, force bool) ([]jose.JSONWebKey, error) {
	k.fetchMu.Lock()
	defer k.fetchMu.Unlock()
	k.mu.Lock()
	held := k.keys
	k.mu.Unlock()
	if !force {
		if k.now().Sub(k.fetched) < k.MinRefresh {
			return held, nil
		}
		k.fetched = k.now()
	}
	body, err := k.api.Get().AbsPath(keysPath).DoRaw(ctx)
	if err != nil {
		return held, fmt.Errorf("reading the issuer's keys from %s: %w", keysPath, err)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		return held, fmt.Errorf("decoding the issuer's keys from %s: %w", keysPath, err)
	}
	if len(set.Keys) == 0 {
		return held, fmt.Errorf("%s lists no keys", keysPath)
	}
	k.mu.Lock()
	k.keys = set.Keys
	k.mu.Unlock()
	return set.Keys, nil
}

// claims are what a Kubernetes service-account token says beyond the
// registered claims: its account and the object it is bound to.
type claims struct {
	Subject    string `json:"sub"`
	Kubernetes struct {
		Namespace      string `json:"namespace"`
		ServiceAccount ref    `json:"serviceaccount"`
		Pod            *ref   `json:"pod"`
		Node           *ref   `json:"node"`
	} `json:"kubernetes.io"`
}

type ref struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
}

// verifier returns a token verifier for audience: signature, issuer,
// audience, expiry and not-before are checked.
func (k *IssuerKeys) verifier(audience string, now func() time.Time) *oidc.IDTokenVerifier {
	algs := make([]string, len(signingAlgs))
	for i, a := range signingAlgs {
		algs[i] = string(a)
	}
	return oidc.NewVerifier(k.Issuer, k, &oidc.Config{ClientID: audience, SupportedSigningAlgs: algs, Now: now})
}
