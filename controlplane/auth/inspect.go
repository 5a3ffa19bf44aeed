package auth

import (
	"context"
	"errors"
	"fmt"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spoke-proxy/spoke/controlplane/server"
)

// The resource inspection is authorized on: RBAC grants "get" on
// nodeviews.spoke.io (optionally by node name) to read a node's view and
// "list" to list the nodes.
const (
	NodeViewsGroup    = "spoke.io"
	NodeViewsResource = "nodeviews"
)

// ErrPermissionDenied marks an authenticated caller that may not make the
// call.
var ErrPermissionDenied = server.ErrPermissionDenied

// Inspector implements server.Inspector. An agent's own token, as the
// Authenticator binds it to a node, reads only that node's view; any other
// token is reviewed for the API server's audiences and its user is checked
// with a SubjectAccessReview on nodeviews.spoke.io.
type Inspector struct {
	agents *Authenticator
}

// NewInspector returns an Inspector that recognizes agents with agents and
// reviews other tokens with the same client.
func NewInspector(agents *Authenticator) *Inspector {
	return &Inspector{agents: agents}
}

// Authorize implements server.Inspector.
func (in *Inspector) Authorize(ctx context.Context, verb, node string) error {
	token, err := bearerToken(ctx)
	if err != nil {
		return err
	}
	agentNode, err := in.agents.NodeName(ctx)
	switch {
	case err == nil:
		if verb == "get" && node == agentNode {
			return nil
		}
		return fmt.Errorf("%w: the agent of node %q may read only its own node's view", ErrPermissionDenied, agentNode)
	case !errors.Is(err, ErrUnauthenticated):
		return err
	}
	user, err := in.user(ctx, token)
	if err != nil {
		return err
	}
	return in.access(ctx, user, verb, node)
}

// user reviews token for the API server's own audiences.
func (in *Inspector) user(ctx context.Context, token string) (authenticationv1.UserInfo, error) {
	tr, err := in.agents.opts.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token},
	}, metav1.CreateOptions{})
	if err != nil {
		return authenticationv1.UserInfo{}, fmt.Errorf("reviewing token: %w", err)
	}
	if !tr.Status.Authenticated {
		return authenticationv1.UserInfo{}, fmt.Errorf("%w: token rejected: %s", ErrUnauthenticated, tr.Status.Error)
	}
	return tr.Status.User, nil
}

// access asks the API server whether user may use verb on node's view.
func (in *Inspector) access(ctx context.Context, user authenticationv1.UserInfo, verb, node string) error {
	extra := make(map[string]authorizationv1.ExtraValue, len(user.Extra))
	for k, v := range user.Extra {
		extra[k] = authorizationv1.ExtraValue(v)
	}
	sar, err := in.agents.opts.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{
			User: user.Username, UID: user.UID, Groups: user.Groups, Extra: extra,
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: verb, Group: NodeViewsGroup, Resource: NodeViewsResource, Name: node,
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("reviewing access: %w", err)
	}
	if !sar.Status.Allowed {
		what := "list nodeviews." + NodeViewsGroup
		if node != "" {
			what = fmt.Sprintf("%s nodeviews.%s %q", verb, NodeViewsGroup, node)
		}
		return fmt.Errorf("%w: %s may not %s", ErrPermissionDenied, user.Username, what)
	}
	return nil
}
