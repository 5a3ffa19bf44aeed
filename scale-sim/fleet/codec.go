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
	"github.com/spoke-proxy/spoke/scale-sim/viewwire"
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
	r := viewwire.NewReader(b)
	for r.Next() {
		if r.Type != protowire.BytesType || (r.Num != viewwire.Nonce && r.Num != viewwire.Resources && r.Num != viewwire.Removed && r.Num != viewwire.Revisions) {
			// Not what this codec knows (send_initial_versions, in a
			// response that carries nothing else): decode it the
			// standard way.
			resp.Reset()
			return proto.Unmarshal(b, resp)
		}
		switch r.Num {
		case viewwire.Nonce:
			resp.Nonce = string(r.Bytes)
		case viewwire.Resources:
			res, err := c.intern(r.Bytes)
			if err != nil {
				return err
			}
			resp.Resources = append(resp.Resources, res)
		case viewwire.Removed:
			resp.RemovedResources = append(resp.RemovedResources, string(r.Bytes))
		case viewwire.Revisions:
			resp.ApiRevisions = &spokev1.ApiRevisions{}
			if err := proto.Unmarshal(r.Bytes, resp.ApiRevisions); err != nil {
				return fmt.Errorf("decoding a view response's API revisions: %w", err)
			}
		}
	}
	if err := r.Err(); err != nil {
		return fmt.Errorf("decoding a view response: %w", err)
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
