package spokev1

import (
	"errors"
	"sync"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// requestVersions returns initial_resource_versions' field number (read
// once the generated descriptors are initialised).
var requestVersions = sync.OnceValue(func() protowire.Number {
	return fieldNumber(&StreamViewsRequest{}, "initial_resource_versions")
})

// UnmarshalRequest decodes b into req as proto.Unmarshal does, and builds
// initial_resource_versions without reflection: a first request lists every
// resource the agent holds, and a restarted control plane reads one from
// every agent at once (5,000 × 1,000 entries spent most of its CPU in the
// generic map decoding). The map is sized once; its entries are checked as
// proto.Unmarshal checks them (well-formed, keys and values valid UTF-8,
// the last of a repeated key wins, unknown entry fields skipped); every
// other field goes through proto.Unmarshal, in its order.
func UnmarshalRequest(b []byte, req *StreamViewsRequest) error {
	field := requestVersions()
	entries, size, err := countEntries(b, field)
	if err != nil || entries == 0 {
		// No map: nothing to do faster (an acknowledgement); or bad wire
		// data, which proto.Unmarshal reports as it always does.
		return proto.Unmarshal(b, req)
	}
	// Every key and value is copied into one buffer, turned into one
	// string that the map's strings share, instead of two allocations per
	// entry. A string kept from the map keeps that whole string alive: the
	// control plane keeps them only until the first response is sent.
	text := make([]byte, 0, size)
	spans := make([][4]int, 0, entries) // key and value offsets into text
	var rest []byte                     // the other fields: a few small ones
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if num == field && typ == protowire.BytesType {
			entry, _ := protowire.ConsumeBytes(b[n:])
			key, value, err := decodeEntry(entry)
			if err != nil {
				return err
			}
			at := len(text)
			text = append(append(text, key...), value...)
			spans = append(spans, [4]int{at, at + len(key), at + len(key), len(text)})
		} else {
			rest = append(rest, b[:n+m]...)
		}
		b = b[n+m:]
	}
	if err := proto.Unmarshal(rest, req); err != nil {
		return err
	}
	all := string(text)
	versions := make(map[string]string, entries)
	for _, s := range spans {
		versions[all[s[0]:s[1]]] = all[s[2]:s[3]]
	}
	req.InitialResourceVersions = versions
	return nil
}

// countEntries counts initial_resource_versions entries in b and their
// bytes, checking the top level's wire format.
func countEntries(b []byte, field protowire.Number) (count, size int, err error) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, 0, protowire.ParseError(n)
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return 0, 0, protowire.ParseError(m)
		}
		if num == field && typ == protowire.BytesType {
			count++
			size += m
		}
		b = b[n+m:]
	}
	return count, size, nil
}

var errFieldNumber = errors.New("spokev1: initial_resource_versions: invalid field number")

var errInvalidUTF8 = errors.New("spokev1: initial_resource_versions: string field contains invalid UTF-8")

// decodeEntry decodes one map entry: key = 1, value = 2, each the last
// one given, anything else skipped.
func decodeEntry(b []byte) (key, value []byte, err error) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, nil, protowire.ParseError(n)
		}
		if num > protowire.MaxValidNumber {
			return nil, nil, errFieldNumber
		}
		b = b[n:]
		if (num == 1 || num == 2) && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return nil, nil, protowire.ParseError(m)
			}
			if !utf8.Valid(v) { // each one, as proto.Unmarshal checks it
				return nil, nil, errInvalidUTF8
			}
			if num == 1 {
				key = v
			} else {
				value = v
			}
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return nil, nil, protowire.ParseError(m)
		}
		b = b[m:]
	}
	return key, value, nil
}
