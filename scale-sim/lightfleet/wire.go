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

	"github.com/spoke-proxy/spoke/scale-sim/viewwire"
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
	r := viewwire.NewReader(b)
	for r.Next() {
		if r.Num == viewwire.SendHeld && r.Type == protowire.VarintType {
			resp.sendHeld = r.Varint != 0
			continue
		}
		if r.Type != protowire.BytesType {
			continue
		}
		switch r.Num {
		case viewwire.Nonce:
			resp.nonce = string(r.Bytes)
		case viewwire.Resources:
			res, err := decodeResource(r.Bytes, intern)
			if err != nil {
				return err
			}
			resp.resources = append(resp.resources, res)
		case viewwire.Removed:
			resp.removed = append(resp.removed, intern(r.Bytes))
		case viewwire.Revisions:
			resp.revisions = append([]byte(nil), r.Bytes...)
		}
	}
	if err := r.Err(); err != nil {
		return fmt.Errorf("decoding a view response: %w", err)
	}
	return nil
}

func decodeResource(b []byte, intern func([]byte) string) (received, error) {
	var res received
	r := viewwire.NewReader(b)
	for r.Next() {
		if r.Type != protowire.BytesType {
			continue
		}
		switch r.Num {
		case viewwire.Name:
			res.name = intern(r.Bytes)
		case viewwire.Version:
			res.version = string(r.Bytes)
		case viewwire.Service, viewwire.Node:
			res.hash, res.hasContent = ContentHash(r.Bytes), true
		}
	}
	if err := r.Err(); err != nil {
		return res, fmt.Errorf("decoding a resource: %w", err)
	}
	return res, nil
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
