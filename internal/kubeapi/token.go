package kubeapi

import (
	"context"
	"fmt"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// PodToken describes a ServiceAccount token bound to a pod, as the kubelet
// projects one into an agent's pod.
type PodToken struct {
	Namespace, ServiceAccount string
	// Pod is created on Node (as an object only: nothing runs it) unless
	// it exists.
	Pod, Node string
	Audience  string
	// ExpirationSeconds of the token; the API server's default when 0.
	ExpirationSeconds int64
}

// IssuePodToken creates the ServiceAccount and the pod if they do not
// exist and returns a token bound to the pod, for agents that run as
// processes rather than pods (make local, tests) but authenticate as a
// pod's would.
func IssuePodToken(ctx context.Context, client kubernetes.Interface, req PodToken) (string, error) {
	sas := client.CoreV1().ServiceAccounts(req.Namespace)
	_, err := sas.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: req.ServiceAccount}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("creating ServiceAccount %s/%s: %w", req.Namespace, req.ServiceAccount, err)
	}
	pods := client.CoreV1().Pods(req.Namespace)
	p, err := pods.Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: req.Pod},
		Spec: corev1.PodSpec{ServiceAccountName: req.ServiceAccount, NodeName: req.Node,
			Containers: []corev1.Container{{Name: "agent", Image: "spoke-agent"}}},
	}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		p, err = pods.Get(ctx, req.Pod, metav1.GetOptions{})
	}
	if err != nil {
		return "", fmt.Errorf("creating pod %s/%s: %w", req.Namespace, req.Pod, err)
	}
	spec := authenticationv1.TokenRequestSpec{
		Audiences:      []string{req.Audience},
		BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
	}
	if req.ExpirationSeconds > 0 {
		spec.ExpirationSeconds = &req.ExpirationSeconds
	}
	tr, err := sas.CreateToken(ctx, req.ServiceAccount, &authenticationv1.TokenRequest{Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("requesting a token of %s/%s bound to pod %s: %w", req.Namespace, req.ServiceAccount, req.Pod, err)
	}
	return tr.Status.Token, nil
}
