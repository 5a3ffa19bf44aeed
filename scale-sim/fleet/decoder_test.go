package fleet

import (
	"testing"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// TestSharedDecoderDecodesOnce checks that agents handed the same resource
// share one decoded service, and that a version that does not match the
// content is refused.
func TestSharedDecoderDecodesOnce(t *testing.T) {
	r := &spokev1.Resource{Name: "ns/web", Kind: &spokev1.Resource_Service{Service: &spokev1.Service{
		Namespace: "ns", Name: "web", ClusterIps: []string{"10.96.0.1"},
	}}}
	v, err := spokev1.ContentVersion(r)
	if err != nil {
		t.Fatal(err)
	}
	r.Version = v
	d := newSharedDecoder()
	a, err := d.Service(r)
	if err != nil {
		t.Fatal(err)
	}
	b, err := d.Service(r)
	if err != nil {
		t.Fatal(err)
	}
	if a != b {
		t.Error("two agents decoding the same resource hold two copies of its service")
	}
	bad := &spokev1.Resource{Name: r.Name, Version: "other", Kind: r.Kind}
	if _, err := d.Service(bad); err == nil {
		t.Error("a resource whose version does not match its content was decoded")
	}
}
