package lightfleet

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"

	// Registers the proto codec that requests go through.
	_ "google.golang.org/grpc/encoding/proto"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// Field numbers of the messages a light agent reads, from the generated
// descriptors.
var (
	respFields = (&spokev1.StreamViewsResponse{}).ProtoReflect().Descriptor().Fields()
	resFields  = (&spokev1.Resource{}).ProtoReflect().Descriptor().Fields()

	fieldNonce     = respFields.ByName("nonce").Number()
	fieldResources = respFields.ByName("resources").Number()
	fieldRemoved   = respFields.ByName("removed_resources").Number()
	fieldRevisions = respFields.ByName("api_revisions").Number()
	fieldSendHeld  = respFields.ByName("send_initial_versions").Number()
	fieldName      = resFields.ByName("name").Number()
	fieldVersion   = resFields.ByName("version").Number()
	fieldService   = resFields.ByName("service").Number()
	fieldNode      = resFields.ByName("node").Number()
)

// Hash is a resource's content hash: what the control plane's version is
// the hex encoding of.
type Hash [12]byte

func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// ContentHash hashes a resource's encoded content as spokev1.ContentVersion
// does.
func ContentHash(content []byte) Hash {
	sum := sha256.Sum256(content)
	return Hash(sum[:12])
}

// received is one resource of a response: its name and version as sent,
// and the hash of its content as received.
type received struct {
	name, version string
	hash          Hash
	hasContent    bool
}

// response is a StreamViewsResponse as a light agent reads it.
type response struct {
	nonce     string
	resources []received
	removed   []string
	revisions []byte // the encoded ApiRevisions, nil when unset
	// sendHeld asks for the versions held: the digest differed.
	sendHeld bool
}

// decodeResponse reads a StreamViewsResponse's envelope from its wire form;
// intern returns the string to keep for a resource name.
func decodeResponse(b []byte, resp *response, intern func([]byte) string) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("decoding a view response: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if num == fieldSendHeld && typ == protowire.VarintType {
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return fmt.Errorf("decoding a view response: %w", protowire.ParseError(n))
			}
			resp.sendHeld = v != 0
			b = b[n:]
			continue
		}
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return fmt.Errorf("decoding a view response: %w", protowire.ParseError(n))
			}
			b = b[n:]
			continue
		}
		field, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return fmt.Errorf("decoding a view response: %w", protowire.ParseError(n))
		}
		b = b[n:]
		switch num {
		case fieldNonce:
			resp.nonce = string(field)
		case fieldResources:
			r, err := decodeResource(field, intern)
			if err != nil {
				return err
			}
			resp.resources = append(resp.resources, r)
		case fieldRemoved:
			resp.removed = append(resp.removed, intern(field))
		case fieldRevisions:
			resp.revisions = append([]byte(nil), field...)
		}
	}
	return nil
}

func decodeResource(b []byte, intern func([]byte) string) (received, error) {
	var r received
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return r, fmt.Errorf("decoding a resource: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return r, fmt.Errorf("decoding a resource: %w", protowire.ParseError(n))
			}
			b = b[n:]
			continue
		}
		field, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return r, fmt.Errorf("decoding a resource: %w", protowire.ParseError(n))
		}
		b = b[n:]
		switch num {
		case fieldName:
			r.name = intern(field)
		case fieldVersion:
			r.version = string(field)
		case fieldService, fieldNode:
			r.hash, r.hasContent = ContentHash(field), true
		}
	}
	return r, nil
}

// codec sends requests with the standard proto codec and reads responses
// with decodeResponse, so that a light agent never decodes a view.
type codec struct {
	proto  encoding.CodecV2
	intern func([]byte) string
}

func (c *codec) Name() string { return c.proto.Name() }

func (c *codec) Marshal(v any) (mem.BufferSlice, error) { return c.proto.Marshal(v) }

func (c *codec) Unmarshal(data mem.BufferSlice, v any) error {
	resp, ok := v.(*response)
	if !ok {
		return c.proto.Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return decodeResponse(buf.ReadOnlyData(), resp, c.intern)
}
