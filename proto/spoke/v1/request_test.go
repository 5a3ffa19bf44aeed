package spokev1

import (
	"fmt"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// firstRequest is an agent's first request holding n resources.
func firstRequest(n int) *StreamViewsRequest {
	req := &StreamViewsRequest{NodeName: "node-1", InitialResourceVersions: map[string]string{},
		InitialApiRevisions: &ApiRevisions{Services: 10, EndpointSlices: 20, Nodes: 30}}
	for i := range n {
		req.InitialResourceVersions[fmt.Sprintf("namespace-%d/service-%d", i%7, i)] = fmt.Sprintf("%016x", i*7919)
	}
	return req
}

// sameAsProto checks that UnmarshalRequest and proto.Unmarshal agree on b:
// both fail, or both decode the same message.
func sameAsProto(t *testing.T, b []byte) {
	t.Helper()
	var want, got StreamViewsRequest
	wantErr := proto.Unmarshal(b, &want)
	gotErr := UnmarshalRequest(b, &got)
	if (wantErr == nil) != (gotErr == nil) {
		t.Fatalf("proto.Unmarshal: %v; UnmarshalRequest: %v (input %x)", wantErr, gotErr, b)
	}
	if wantErr == nil && !proto.Equal(&want, &got) {
		t.Fatalf("proto.Unmarshal: %v; UnmarshalRequest: %v (input %x)", &want, &got, b)
	}
}

func TestUnmarshalRequestAgreesWithProto(t *testing.T) {
	entry := func(fields ...[]byte) []byte {
		var e []byte
		for _, f := range fields {
			e = append(e, f...)
		}
		return protowire.AppendBytes(protowire.AppendTag(nil, requestVersions(), protowire.BytesType), e)
	}
	str := func(num protowire.Number, s string) []byte {
		return protowire.AppendString(protowire.AppendTag(nil, num, protowire.BytesType), s)
	}
	full, err := proto.Marshal(firstRequest(100))
	if err != nil {
		t.Fatal(err)
	}
	ack, err := proto.Marshal(&StreamViewsRequest{ResponseNonce: "3", Error: &Rejection{Message: "no", ResourceNames: []string{"a/b"}}})
	if err != nil {
		t.Fatal(err)
	}
	digest, err := proto.Marshal(&StreamViewsRequest{NodeName: "node-1", InitialVersionsDigest: VersionsDigest(firstRequest(100).InitialResourceVersions)})
	if err != nil {
		t.Fatal(err)
	}
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	for name, b := range map[string][]byte{
		"first request":             full,
		"acknowledgement":           ack,
		"first request with digest": digest,
		"digest and versions":       cat(digest, entry(str(1, "a/b"), str(2, "v"))),
		"empty":                     nil,
		"repeated key, last wins":   cat(entry(str(1, "a/b"), str(2, "v1")), str(1, "node"), entry(str(1, "a/b"), str(2, "v2"))),
		"value first, key missing":  entry(str(2, "v")),
		"key only":                  entry(str(1, "a/b")),
		"unknown entry field":       entry(str(1, "a/b"), protowire.AppendVarint(protowire.AppendTag(nil, 9, protowire.VarintType), 5), str(2, "v")),
		"key with the wrong type":   entry(protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 5), str(2, "v")),
		"invalid UTF-8 key":         entry(str(1, "a/\xff"), str(2, "v")),
		"invalid UTF-8 value":       entry(str(1, "a/b"), str(2, "\xc3")),
		"invalid UTF-8 node name":   cat(entry(str(1, "a/b")), str(1, "\xff")),
		"truncated entry":           entry(str(1, "a/b"))[:5],
		"truncated inside an entry": cat(protowire.AppendTag(nil, requestVersions(), protowire.BytesType), []byte{4}, protowire.AppendTag(nil, 1, protowire.BytesType), []byte{9, 'a'}),
		"map field as a varint":     cat(protowire.AppendVarint(protowire.AppendTag(nil, requestVersions(), protowire.VarintType), 1), entry(str(1, "a/b"))),
	} {
		t.Run(name, func(t *testing.T) { sameAsProto(t, b) })
	}
}

func FuzzUnmarshalRequest(f *testing.F) {
	for _, n := range []int{0, 1, 3} {
		b, err := proto.Marshal(firstRequest(n))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	b, err := proto.Marshal(&StreamViewsRequest{InitialVersionsDigest: VersionsDigest(firstRequest(3).InitialResourceVersions)})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Fuzz(sameAsProto)
}

// BenchmarkUnmarshalFirstRequest compares UnmarshalRequest with
// proto.Unmarshal on a first request holding 1,000 resources.
func BenchmarkUnmarshalFirstRequest(b *testing.B) {
	data, err := proto.Marshal(firstRequest(1000))
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		fn   func([]byte, *StreamViewsRequest) error
	}{
		{"proto.Unmarshal", func(d []byte, r *StreamViewsRequest) error { return proto.Unmarshal(d, r) }},
		{"UnmarshalRequest", UnmarshalRequest},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var r StreamViewsRequest
				if err := c.fn(data, &r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
