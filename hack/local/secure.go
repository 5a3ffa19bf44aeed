package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/kubernetes"

	"github.com/spoke-proxy/spoke/internal/kubeapi"
	"github.com/spoke-proxy/spoke/internal/pki"
	"github.com/spoke-proxy/spoke/internal/tlsfiles"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// agentAudience, agentNamespace and agentAccount are what the control
// plane expects of agents' tokens by default, as deploy/ sets them up.
const (
	agentAudience  = "spoke-controlplane"
	agentNamespace = "kube-system"
	agentAccount   = "spoke-agent"
)

// security is the local cluster's TLS and identities: the control plane
// serves over TLS and authenticates agents by pod-bound tokens, as in a
// real cluster.
type security struct {
	caFile, certFile, keyFile string
	// adminToken is the API server's admin token, which RBAC allows to
	// read node views.
	adminToken string
}

// secure issues the control plane's serving certificate for the host's
// address on the node network.
func (l *local) secure(adminToken string) (*security, error) {
	ca, err := pki.NewCA("spoke-local-ca")
	if err != nil {
		return nil, err
	}
	s := &security{caFile: filepath.Join(l.dir, "ca.crt"), adminToken: adminToken}
	if err := os.WriteFile(s.caFile, ca.PEM, 0o644); err != nil {
		return nil, err
	}
	s.certFile, s.keyFile, err = ca.WritePair(l.dir, "controlplane", pki.Spec{
		CN: "spoke-controlplane", Server: true, IPs: []net.IP{hostAddr.Addr().AsSlice()},
	})
	return s, err
}

// agentToken writes a token bound to a pod of the agents' ServiceAccount on
// node (the pod exists as an object only) and returns its path.
func (l *local) agentToken(ctx context.Context, client kubernetes.Interface, node string) (string, error) {
	token, err := kubeapi.IssuePodToken(ctx, client, kubeapi.PodToken{
		Namespace: agentNamespace, ServiceAccount: agentAccount, Pod: "spoke-agent-" + node, Node: node,
		Audience: agentAudience, ExpirationSeconds: int64((48 * time.Hour).Seconds()),
	})
	if err != nil {
		return "", err
	}
	path := filepath.Join(l.dir, node+".token")
	return path, os.WriteFile(path, []byte(token), 0o600)
}

// grpcurl returns the command that calls an inspection method of the
// control plane with the admin token.
func (s *security) grpcurl(cpAddr, method string) string {
	return fmt.Sprintf(`go tool grpcurl -cacert %s -H "authorization: Bearer %s" %s spoke.v1.ControlPlaneInspectionService/%s`, s.caFile, s.adminToken, cpAddr, method)
}

// checkInspection checks that the control plane's inspection service
// refuses a caller without a token and answers the admin with every node.
func (s *security) checkInspection(ctx context.Context, cpAddr string, nodes int) (failed int, err error) {
	creds, err := tlsfiles.Client(tlsfiles.Files{CA: s.caFile})
	if err != nil {
		return 0, err
	}
	defer creds.Close()
	conn, err := grpc.NewClient(cpAddr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	client := spokev1.NewControlPlaneInspectionServiceClient(conn)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()

	_, err = client.ListNodes(ctx, &spokev1.ListNodesRequest{})
	if c := status.Code(err); c == codes.Unauthenticated || c == codes.PermissionDenied {
		fmt.Printf("ok   inspection without a token: %s\n", c)
	} else {
		fmt.Printf("FAIL inspection without a token: %v, want Unauthenticated or PermissionDenied\n", err)
		failed++
	}
	resp, err := client.ListNodes(ctx, &spokev1.ListNodesRequest{}, grpc.PerRPCCredentials(bearer(s.adminToken)))
	var names []string
	for _, n := range resp.GetNodes() {
		names = append(names, n.GetNodeName())
	}
	if err == nil && len(names) == nodes {
		fmt.Printf("ok   inspection with the admin token: %s\n", strings.Join(names, ", "))
	} else {
		fmt.Printf("FAIL inspection with the admin token: %v %v, want %d nodes\n", names, err, nodes)
		failed++
	}
	return failed, nil
}

// bearer sends a bearer token with each call.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }

var _ credentials.PerRPCCredentials = bearer("")
