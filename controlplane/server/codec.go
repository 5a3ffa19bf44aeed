package server

import (
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"

	// Registers the proto codec that rawCodec falls back to.
	_ "google.golang.org/grpc/encoding/proto"
)

// rawResponse is a StreamViewsResponse already in wire form, as slices to
// send one after the other: resources encoded once in the store are sent
// from the store's bytes, neither encoded again nor copied per stream.
type rawResponse struct{ parts [][]byte }

// rawCodec sends rawResponse as it is and everything else through the
// standard proto codec.
type rawCodec struct{ proto encoding.CodecV2 }

func newRawCodec() rawCodec { return rawCodec{proto: encoding.GetCodecV2("proto")} }

func (c rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(*rawResponse); ok {
		out := make(mem.BufferSlice, len(r.parts))
		for i, b := range r.parts {
			out[i] = mem.SliceBuffer(b)
		}
		return out, nil
	}
	return c.proto.Marshal(v)
}

// Unmarshal decodes agents' requests with spokev1.UnmarshalRequest (a
// first request's thousands of versions, without reflection), everything
// else through the proto codec.
func (c rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	req, ok := v.(*spokev1.StreamViewsRequest)
	if !ok {
		return c.proto.Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return spokev1.UnmarshalRequest(buf.ReadOnlyData(), req)
}

func (c rawCodec) Name() string { return c.proto.Name() }
