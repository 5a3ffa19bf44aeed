package agent

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
)

// TokenFile sends the ServiceAccount token in a file (a projected volume,
// which the kubelet rotates) as a bearer token on every stream. The file is
// read again when it changes.
type TokenFile struct {
	Path string

	mu      sync.Mutex
	token   string
	modTime time.Time
}

var _ credentials.PerRPCCredentials = (*TokenFile)(nil)

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (f *TokenFile) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	st, err := os.Stat(f.Path)
	if err != nil {
		return nil, fmt.Errorf("reading token: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.token == "" || !st.ModTime().Equal(f.modTime) {
		b, err := os.ReadFile(f.Path)
		if err != nil {
			return nil, fmt.Errorf("reading token: %w", err)
		}
		f.token, f.modTime = strings.TrimSpace(string(b)), st.ModTime()
	}
	return map[string]string{"authorization": "Bearer " + f.token}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
// The token is never sent in plaintext.
func (f *TokenFile) RequireTransportSecurity() bool { return true }
