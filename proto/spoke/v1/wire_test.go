package spokev1

import (
	"testing"

	"google.golang.org/protobuf/proto"
)

func TestFrameResourceDecodesAsAResponse(t *testing.T) {
	for _, r := range []*Resource{
		{Name: "default/web", Kind: &Resource_Service{Service: &Service{Namespace: "default", Name: "web", ClusterIps: []string{"10.96.0.10"}}}},
		{Name: NodeResourceName, Kind: &Resource_Node{Node: &Node{Name: "n1", Zone: "z"}}},
	} {
		f, err := FrameResource(r)
		if err != nil {
			t.Fatal(err)
		}
		want, err := ContentVersion(r)
		if err != nil {
			t.Fatal(err)
		}
		if f.Version != want || r.Version != want {
			t.Errorf("%s: version %q, resource says %q, want %q", r.Name, f.Version, r.Version, want)
		}
		b := AppendResponseNonce(nil, "7")
		b = append(b, f.Framed...)
		b = AppendResponseRemoved(b, "gone/svc")
		b = AppendResponseRevisions(b, &ApiRevisions{Services: 1<<40 + 3, Nodes: 9})
		var resp StreamViewsResponse
		if err := proto.Unmarshal(b, &resp); err != nil {
			t.Fatal(err)
		}
		if resp.GetNonce() != "7" || len(resp.GetResources()) != 1 || !proto.Equal(resp.GetResources()[0], r) ||
			len(resp.GetRemovedResources()) != 1 || resp.GetRemovedResources()[0] != "gone/svc" || resp.GetApiRevisions().GetServices() != 1<<40+3 || resp.GetApiRevisions().GetNodes() != 9 {
			t.Errorf("%s: decoded %v", r.Name, &resp)
		}
		var alone Resource
		if err := proto.Unmarshal(f.Encoded, &alone); err != nil || !proto.Equal(&alone, r) {
			t.Errorf("%s: Encoded decodes to %v, %v", r.Name, &alone, err)
		}
	}
	if _, err := FrameResource(&Resource{Name: "empty"}); err == nil {
		t.Error("a resource without content was framed")
	}
}

func TestApiRevisionsAtLeast(t *testing.T) {
	a := &ApiRevisions{Services: 5, EndpointSlices: 7, Nodes: 3}
	for _, c := range []struct {
		o    *ApiRevisions
		want bool
	}{
		{nil, true},
		{&ApiRevisions{}, true},
		{&ApiRevisions{Services: 5, EndpointSlices: 7, Nodes: 3}, true},
		{&ApiRevisions{Services: 4, EndpointSlices: 8}, false},
		{&ApiRevisions{Nodes: 4}, false},
	} {
		if got := a.AtLeast(c.o); got != c.want {
			t.Errorf("%v AtLeast %v = %v", a, c.o, got)
		}
	}
	if (*ApiRevisions)(nil).AtLeast(&ApiRevisions{Services: 1}) {
		t.Error("nothing reached a revision")
	}
}
