// Package deploy_test applies the manifests to a real API server and checks
// what the control plane's and the agents' ServiceAccounts may and may not
// do.
package deploy_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/spoke-proxy/spoke/internal/kubeapi"
)

// manifests reads every object the kustomization lists.
func manifests(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	var k struct {
		Resources []string `json:"resources"`
	}
	b, err := os.ReadFile("kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := sigsyaml.Unmarshal(b, &k); err != nil {
		t.Fatal(err)
	}
	var out []*unstructured.Unstructured
	for _, f := range k.Resources {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
		for {
			var u unstructured.Unstructured
			if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if len(u.Object) > 0 {
				out = append(out, &u)
			}
		}
	}
	return out
}

func TestManifestsApplyAndGrantLeastPrivilege(t *testing.T) {
	api := kubeapi.ForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := api.RESTConfig()
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))

	objs := manifests(t)
	kinds := map[string]bool{}
	for _, u := range objs {
		kinds[u.GetKind()] = true
		gvk := u.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s %s: %v", gvk, u.GetName(), err)
		}
		var r dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			r = dyn.Resource(m.Resource).Namespace(u.GetNamespace())
		}
		if _, err := r.Apply(ctx, u.GetName(), u, metav1.ApplyOptions{FieldManager: "spoke-test", Force: true}); err != nil {
			t.Fatalf("applying %s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
	for _, k := range []string{"Deployment", "DaemonSet", "PodDisruptionBudget", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount", "Service", "ConfigMap"} {
		if !kinds[k] {
			t.Errorf("the manifests have no %s", k)
		}
	}

	type access struct {
		verb, group, resource string
		allowed               bool
		namespace             string // "default" when empty
	}
	check := func(user string, table []access) {
		for _, a := range table {
			if a.namespace == "" {
				a.namespace = "default"
			}
			sar, err := client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
				Spec: authorizationv1.SubjectAccessReviewSpec{
					User:               user,
					Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"},
					ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: a.verb, Group: a.group, Resource: a.resource, Namespace: a.namespace},
				},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if sar.Status.Allowed != a.allowed {
				t.Errorf("%s %s %s/%s in %s: allowed=%v, want %v", user, a.verb, a.group, a.resource, a.namespace, sar.Status.Allowed, a.allowed)
			}
		}
	}
	check("system:serviceaccount:kube-system:spoke-controlplane", []access{
		{"list", "", "services", true, ""}, {"watch", "", "services", true, ""},
		{"list", "discovery.k8s.io", "endpointslices", true, ""}, {"watch", "discovery.k8s.io", "endpointslices", true, ""},
		{"list", "", "nodes", true, ""}, {"get", "", "pods", true, "kube-system"}, {"get", "", "pods", false, ""},
		{"list", "", "pods", true, "kube-system"}, {"watch", "", "pods", true, "kube-system"}, {"watch", "", "pods", false, ""},
		{"create", "authentication.k8s.io", "tokenreviews", true, ""}, {"create", "", "events", false, ""},
		{"create", "authorization.k8s.io", "subjectaccessreviews", true, ""}, {"get", "spoke.io", "nodeviews", false, ""},
		{"list", "", "secrets", false, ""}, {"get", "", "secrets", false, ""}, {"update", "", "services", false, ""},
		{"delete", "discovery.k8s.io", "endpointslices", false, ""}, {"list", "", "pods", false, ""},
		{"create", "", "serviceaccounts/token", false, ""}, {"patch", "", "nodes", false, ""},
	})
	// The service-account issuer's keys, which verify agents' tokens
	// without a TokenReview each.
	for _, path := range []string{"/.well-known/openid-configuration", "/openid/v1/jwks"} {
		sar, err := client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{
				User:                  "system:serviceaccount:kube-system:spoke-controlplane",
				NonResourceAttributes: &authorizationv1.NonResourceAttributes{Verb: "get", Path: path},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !sar.Status.Allowed {
			t.Errorf("the control plane may not get %s", path)
		}
	}
	check("system:serviceaccount:kube-system:spoke-agent", []access{
		{"list", "", "services", false, ""}, {"list", "discovery.k8s.io", "endpointslices", false, ""},
		{"get", "", "pods", false, ""}, {"get", "", "pods", false, "kube-system"}, {"list", "", "nodes", false, ""}, {"get", "", "secrets", false, ""},
		{"get", "spoke.io", "nodeviews", false, ""}, {"list", "spoke.io", "nodeviews", false, ""},
	})
}
