package fleet

import (
	"context"

	"google.golang.org/grpc/credentials"
)

// Bearer sends a node's agent token on every stream, as the agent's
// TokenFile does with the token in its file.
type Bearer string

var _ credentials.PerRPCCredentials = Bearer("")

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (b Bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials: the
// token is never sent in plaintext.
func (Bearer) RequireTransportSecurity() bool { return true }
