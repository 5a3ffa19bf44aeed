package spokev1

import (
	"bytes"
	"maps"
	"slices"
	"testing"
)

func TestVersionsDigest(t *testing.T) {
	held := firstRequest(1000).InitialResourceVersions
	held[NodeResourceName] = "n1"
	d := VersionsDigest(held)
	if len(d) != VersionsDigestSize {
		t.Fatalf("digest of %d bytes, want %d", len(d), VersionsDigestSize)
	}
	if again := VersionsDigest(maps.Clone(held)); !bytes.Equal(again, d) {
		t.Fatal("the same versions give another digest")
	}
	differs := func(what string, change func(m map[string]string)) {
		t.Helper()
		m := maps.Clone(held)
		change(m)
		if bytes.Equal(VersionsDigest(m), d) {
			t.Errorf("%s: the digest did not change", what)
		}
	}
	differs("a version changed", func(m map[string]string) { m["namespace-3/service-10"] = "0000000000000001" })
	differs("the node's version changed", func(m map[string]string) { m[NodeResourceName] = "n2" })
	differs("a resource more", func(m map[string]string) { m["a/b"] = "v" })
	differs("a resource fewer", func(m map[string]string) { delete(m, "namespace-3/service-10") })
	differs("no node", func(m map[string]string) { delete(m, NodeResourceName) })
	// Lengths are framed: moving a byte from a name to its version changes
	// the digest.
	a := VersionsDigest(map[string]string{"a/bc": "d"})
	b := VersionsDigest(map[string]string{"a/b": "cd"})
	if bytes.Equal(a, b) {
		t.Error(`{"a/bc": "d"} and {"a/b": "cd"} have one digest`)
	}

	// A digester fed in its order (node first, then names ascending)
	// agrees with VersionsDigest.
	dg := NewVersionsDigester()
	dg.Add(NodeResourceName, held[NodeResourceName])
	for _, name := range slices.Sorted(maps.Keys(held)) {
		if name != NodeResourceName {
			dg.Add(name, held[name])
		}
	}
	if !bytes.Equal(dg.Sum(), d) {
		t.Error("VersionsDigester in order disagrees with VersionsDigest")
	}
}
