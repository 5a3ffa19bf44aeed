package lightfleet

import (
	"bytes"
	"testing"
	"time"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// frame encodes a response as the control plane writes it.
func frame(t *testing.T, nonce string, rs []*spokev1.Resource, removed ...string) []byte {
	t.Helper()
	b := spokev1.AppendResponseNonce(nil, nonce)
	for _, r := range rs {
		fr, err := spokev1.FrameResource(r)
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, fr.Framed...)
	}
	for _, name := range removed {
		b = spokev1.AppendResponseRemoved(b, name)
	}
	return spokev1.AppendResponseRevisions(b, &spokev1.ApiRevisions{Services: 3, EndpointSlices: 4, Nodes: 5})
}

func svc(name string, port uint32) *spokev1.Resource {
	return &spokev1.Resource{Name: name, Kind: &spokev1.Resource_Service{Service: &spokev1.Service{
		Namespace: "ns", Name: name, Ports: []*spokev1.ServicePort{{Port: port}}}}}
}

func decode(t *testing.T, b []byte) *response {
	t.Helper()
	var resp response
	if err := decodeResponse(b, &resp, func(b []byte) string { return string(b) }); err != nil {
		t.Fatal(err)
	}
	return &resp
}

// TestAgentHoldsContentHashes checks that a light agent holds, for each
// resource, the hash of the content it received, which is the version the
// control plane computed, and resumes with it and with the API revisions.
func TestAgentHoldsContentHashes(t *testing.T) {
	var got []applied
	a := newAgent("n1", nil, nil, nil, func(ap applied) { got = append(got, ap) })
	web, db := svc("web", 80), svc("db", 5432)
	node := &spokev1.Resource{Name: spokev1.NodeResourceName, Kind: &spokev1.Resource_Node{Node: &spokev1.Node{Name: "n1", Zone: "z"}}}
	ack := a.handle(decode(t, frame(t, "1", []*spokev1.Resource{node, web, db})))
	if ack.GetResponseNonce() != "1" || ack.GetError() != nil {
		t.Fatalf("first response answered %v, want an ACK of nonce 1", ack)
	}
	for _, r := range []*spokev1.Resource{node, web, db} {
		want, err := spokev1.ContentVersion(r)
		if err != nil {
			t.Fatal(err)
		}
		if h := a.held[r.Name].String(); h != want {
			t.Errorf("%s: held hash %s, control plane's version %s", r.Name, h, want)
		}
	}
	ack = a.handle(decode(t, frame(t, "2", nil, "db")))
	if ack.GetError() != nil {
		t.Fatalf("removal NACKed: %v", ack.GetError())
	}
	if len(got) != 2 || len(got[0].put) != 3 || len(got[1].removed) != 1 || time.Since(got[1].at) > time.Minute {
		t.Fatalf("reported %+v, want 3 resources applied then 1 removed", got)
	}
	hello, held, err := a.hello()
	if err != nil {
		t.Fatal(err)
	}
	if len(hello.GetInitialResourceVersions()) != 2 || hello.GetInitialResourceVersions()["web"] != web.GetVersion() ||
		hello.GetInitialApiRevisions().GetEndpointSlices() != 4 || hello.GetNodeName() != "n1" || hello.GetInitialVersionsDigest() != nil {
		t.Errorf("resuming with %v", hello)
	}
	// To a control plane that reads digests, the digest of the same
	// versions instead.
	a.digests = true
	hello, _, err = a.hello()
	if err != nil {
		t.Fatal(err)
	}
	if len(hello.GetInitialResourceVersions()) != 0 || !bytes.Equal(hello.GetInitialVersionsDigest(), spokev1.VersionsDigest(held)) ||
		hello.GetInitialApiRevisions().GetEndpointSlices() != 4 {
		t.Errorf("resuming with a digest: %v", hello)
	}
}

// TestAgentRejectsContentThatDoesNotMatch checks that a resource whose
// content was changed on the way is NACKed by name and not held, and that
// the last good hash stays.
func TestAgentRejectsContentThatDoesNotMatch(t *testing.T) {
	a := newAgent("n1", nil, nil, nil, func(applied) {})
	web := svc("web", 80)
	a.handle(decode(t, frame(t, "1", []*spokev1.Resource{web})))
	good := a.held["web"]
	// The content as received no longer hashes to the version sent, as
	// when a byte changed on the way.
	resp := decode(t, frame(t, "2", []*spokev1.Resource{svc("web", 81)}))
	resp.resources[0].hash[0] ^= 0xff
	ack := a.handle(resp)
	if ack.GetError() == nil || len(ack.GetError().GetResourceNames()) != 1 || ack.GetError().GetResourceNames()[0] != "web" {
		t.Fatalf("a resource whose content does not hash to its version answered %v, want a NACK naming web", ack)
	}
	if a.held["web"] != good || a.nacks != 1 {
		t.Errorf("after the NACK: held %s (want the last good %s), %d NACKs", a.held["web"], good, a.nacks)
	}
}
