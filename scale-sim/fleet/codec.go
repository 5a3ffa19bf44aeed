package fleet

import (
	"fmt"
	"hash/maphash"
	"runtime"
	"sync"
	"weak"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	// Registers the proto codec that internCodec falls back to.
	_ "google.golang.org/grpc/encoding/proto"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

const internShards = 64

// internCodec decodes view responses so that every agent of the process
// that receives a resource with the same encoding gets the same
// *spokev1.Resource: a process holding thousands of agents keeps one copy
// of each view, and sharedDecoder checks and decodes it once. A
// resource is forgotten once no agent holds it. Every other message goes
// through the standard proto codec.
type internCodec struct {
	proto  encoding.CodecV2
	seed   maphash.Seed
	shards [internShards]internShard
}

type internShard struct {
	mu sync.Mutex
	m  map[string]weak.Pointer[spokev1.Resource]
}

// Field numbers of StreamViewsResponse, from the generated descriptors.
var (
	respFields     = (&spokev1.StreamViewsResponse{}).ProtoReflect().Descriptor().Fields()
	fieldNonce     = respFields.ByName("nonce").Number()
	fieldResources = respFields.ByName("resources").Number()
	fieldRemoved   = respFields.ByName("removed_resources").Number()
	fieldRevisions = respFields.ByName("api_revisions").Number()
)

func newInternCodec() *internCodec {
	c := &internCodec{proto: encoding.GetCodecV2("proto"), seed: maphash.MakeSeed()}
	for i := range c.shards {
		c.shards[i].m = map[string]weak.Pointer[spokev1.Resource]{}
	}
	return c
}

func (c *internCodec) Name() string { return c.proto.Name() }

func (c *internCodec) Marshal(v any) (mem.BufferSlice, error) { return c.proto.Marshal(v) }

func (c *internCodec) Unmarshal(data mem.BufferSlice, v any) error {
	resp, ok := v.(*spokev1.StreamViewsResponse)
	if !ok {
		return c.proto.Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	b := buf.ReadOnlyData()
	whole := b
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("decoding a view response: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if typ != protowire.BytesType || (num != fieldNonce && num != fieldResources && num != fieldRemoved && num != fieldRevisions) {
			// Not what this codec knows (send_initial_versions, in a
			// response that carries nothing else): decode it the
			// standard way.
			resp.Reset()
			return proto.Unmarshal(whole, resp)
		}
		field, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return fmt.Errorf("decoding a view response: %w", protowire.ParseError(n))
		}
		b = b[n:]
		switch num {
		case fieldNonce:
			resp.Nonce = string(field)
		case fieldResources:
			r, err := c.intern(field)
			if err != nil {
				return err
			}
			resp.Resources = append(resp.Resources, r)
		case fieldRemoved:
			resp.RemovedResources = append(resp.RemovedResources, string(field))
		case fieldRevisions:
			resp.ApiRevisions = &spokev1.ApiRevisions{}
			if err := proto.Unmarshal(field, resp.ApiRevisions); err != nil {
				return fmt.Errorf("decoding a view response's API revisions: %w", err)
			}
		}
	}
	return nil
}

func (c *internCodec) intern(b []byte) (*spokev1.Resource, error) {
	sh := &c.shards[maphash.Bytes(c.seed, b)%internShards]
	sh.mu.Lock()
	if wp, ok := sh.m[string(b)]; ok {
		if r := wp.Value(); r != nil {
			sh.mu.Unlock()
			return r, nil
		}
	}
	sh.mu.Unlock()
	r := &spokev1.Resource{}
	if err := proto.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("decoding a resource: %w", err)
	}
	key := string(b)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if wp, ok := sh.m[key]; ok {
		if old := wp.Value(); old != nil {
			return old, nil
		}
	}
	wp := weak.Make(r)
	sh.m[key] = wp
	runtime.AddCleanup(r, func(key string) {
		sh.mu.Lock()
		if cur, ok := sh.m[key]; ok && cur == wp {
			delete(sh.m, key)
		}
		sh.mu.Unlock()
	}, key)
	return r, nil
}
