package e2e

import (
	"context"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/spoke-proxy/spoke/controlplane/app"
	"github.com/spoke-proxy/spoke/controlplane/auth"
	"github.com/spoke-proxy/spoke/internal/background"
	"github.com/spoke-proxy/spoke/internal/wait"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// userToken returns a token of a ServiceAccount for the API server's own
// audience, as `kubectl create token` makes.
func userToken(ctx context.Context, t *testing.T, client kubernetes.Interface, ns, sa string) string {
	t.Helper()
	if _, err := client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// grantNodeViews binds the ClusterRole of deploy/rbac.yaml to a ServiceAccount.
func grantNodeViews(ctx context.Context, t *testing.T, client kubernetes.Interface, ns, sa string) {
	t.Helper()
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "spoke-nodeview-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{auth.NodeViewsGroup}, Resources: []string{auth.NodeViewsResource}, Verbs: []string{"get", "list"}}},
	}
	if _, err := client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "spoke-nodeview-reader-" + sa},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: sa}},
	}
	if _, err := client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func withToken(ctx context.Context, token string) context.Context {
	if token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

func TestInspectionIsAuthorized(t *testing.T) {
	ctx, client, authn := authCluster(t)
	var err error
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cp, err := app.New(app.Options{Client: client, GRPCListener: lis, Authenticator: authn, Inspector: auth.NewInspector(authn)})
	if err != nil {
		t.Fatal(err)
	}
	defer background.Run(ctx, t, "control plane", cp.Run)()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	inspect := spokev1.NewControlPlaneInspectionServiceClient(conn)
	getView := func(token, node string) (*spokev1.GetNodeViewResponse, error) {
		return inspect.GetNodeView(withToken(ctx, token), &spokev1.GetNodeViewRequest{NodeName: node})
	}
	listNodes := func(token string) (*spokev1.ListNodesResponse, error) {
		return inspect.ListNodes(withToken(ctx, token), &spokev1.ListNodesRequest{})
	}
	listHeldBack := func(token string) (*spokev1.ListHeldBackResponse, error) {
		return inspect.ListHeldBack(withToken(ctx, token), &spokev1.ListHeldBackRequest{})
	}
	refused := func(t *testing.T, what string, want codes.Code, answered bool, err error) {
		t.Helper()
		if status.Code(err) != want {
			t.Fatalf("%s: %v, want %v", what, err, want)
		}
		if answered {
			t.Fatalf("%s: refused, yet answered", what)
		}
	}

	t.Run("no token or a bad one is unauthenticated", func(t *testing.T) {
		for _, token := range []string{"", "not-a-token"} {
			v, err := getView(token, "node-1")
			refused(t, "GetNodeView with token "+token, codes.Unauthenticated, v != nil, err)
			l, err := listNodes(token)
			refused(t, "ListNodes with token "+token, codes.Unauthenticated, l != nil, err)
			h, err := listHeldBack(token)
			refused(t, "ListHeldBack with token "+token, codes.Unauthenticated, h != nil, err)
		}
	})

	viewer := userToken(ctx, t, client, "default", "viewer")
	t.Run("a user without the role is denied", func(t *testing.T) {
		v, err := getView(viewer, "node-1")
		refused(t, "GetNodeView", codes.PermissionDenied, v != nil, err)
		l, err := listNodes(viewer)
		refused(t, "ListNodes", codes.PermissionDenied, l != nil, err)
		h, err := listHeldBack(viewer)
		refused(t, "ListHeldBack", codes.PermissionDenied, h != nil, err)
	})

	t.Run("a user with the role reads every node", func(t *testing.T) {
		grantNodeViews(ctx, t, client, "default", "viewer")
		for _, node := range []string{"node-1", "node-2"} {
			wait.For(t, settle, "the viewer reads "+node, func() error {
				v, err := getView(viewer, node)
				if err != nil {
					return err
				}
				if len(v.GetResources()) == 0 {
					return errNotYet
				}
				return nil
			})
		}
		if _, err := listNodes(viewer); err != nil {
			t.Fatalf("ListNodes: %v", err)
		}
		if _, err := listHeldBack(viewer); err != nil {
			t.Fatalf("ListHeldBack: %v", err)
		}
	})

	agentToken := podToken(ctx, t, client, "kube-system", "spoke-agent", "agent-on-node-1", "node-1", audience)
	t.Run("an agent reads its own node only", func(t *testing.T) {
		v, err := getView(agentToken, "node-1")
		if err != nil || len(v.GetResources()) == 0 {
			t.Fatalf("the agent of node-1 reading its view: %d resources, %v", len(v.GetResources()), err)
		}
		v, err = getView(agentToken, "node-2")
		refused(t, "the agent of node-1 reading node-2", codes.PermissionDenied, v != nil, err)
		l, err := listNodes(agentToken)
		refused(t, "the agent of node-1 listing nodes", codes.PermissionDenied, l != nil, err)
		h, err := listHeldBack(agentToken)
		refused(t, "the agent of node-1 listing held-back services", codes.PermissionDenied, h != nil, err)
	})
}
