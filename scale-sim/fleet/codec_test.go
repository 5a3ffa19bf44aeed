package fleet

import (
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// TestResponsesShareResources checks that two agents receiving the same
// response, API revisions included, get the same *spokev1.Resource, so that
// a process of thousands of agents holds and decodes each view once.
func TestResponsesShareResources(t *testing.T) {
	sent := &spokev1.StreamViewsResponse{
		Nonce:            "1",
		Resources:        []*spokev1.Resource{{Name: "ns/web", Version: "v1", Kind: &spokev1.Resource_Service{Service: &spokev1.Service{}}}},
		RemovedResources: []string{"ns/old"},
		ApiRevisions:     &spokev1.ApiRevisions{Services: 10, EndpointSlices: 11, Nodes: 12},
	}
	// Every field is set, so that a field added to responses and not
	// known to the codec (which then decodes without sharing) fails here;
	// but send_initial_versions, which comes alone and is decoded the
	// standard way.
	fields := sent.ProtoReflect().Descriptor().Fields()
	for i := range fields.Len() {
		if fields.Get(i).Name() != "send_initial_versions" && !sent.ProtoReflect().Has(fields.Get(i)) {
			t.Fatalf("the test response does not set %s", fields.Get(i).Name())
		}
	}
	wire, err := proto.Marshal(sent)
	if err != nil {
		t.Fatal(err)
	}
	c := newInternCodec()
	var got [2]*spokev1.StreamViewsResponse
	for i := range got {
		got[i] = &spokev1.StreamViewsResponse{}
		if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire)}, got[i]); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got[i], sent) {
			t.Fatalf("decoded %v, want %v", got[i], sent)
		}
	}
	if got[0].Resources[0] != got[1].Resources[0] {
		t.Error("two agents decoding the same response hold two copies of its resource")
	}
	ask := &spokev1.StreamViewsResponse{SendInitialVersions: true}
	wire, err = proto.Marshal(ask)
	if err != nil {
		t.Fatal(err)
	}
	var decoded spokev1.StreamViewsResponse
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire)}, &decoded); err != nil || !proto.Equal(&decoded, ask) {
		t.Errorf("decoded %v (%v), want %v", &decoded, err, ask)
	}
}
