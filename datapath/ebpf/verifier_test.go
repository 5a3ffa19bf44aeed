package ebpf

import (
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/spoke-proxy/spoke/internal/testnet"
)

// maxProcessed bounds what the verifier may walk for any program: far
// below the kernel's limit of 1,000,000, so that a change that makes
// verification explode (and an agent's start slow) fails here first.
const maxProcessed = 100000

var processedRE = regexp.MustCompile(`processed (\d+) insns`)

// TestVerifierComplexity loads every program and checks how many
// instructions the verifier processed.
func TestVerifierComplexity(t *testing.T) {
	testnet.RequireRoot(t)
	spec, err := loadLb()
	if err != nil {
		t.Fatal(err)
	}
	for name, m := range spec.Maps {
		if !strings.HasPrefix(name, ".") {
			m.MaxEntries = 1024
		}
		m.Pinning = ebpf.PinNone
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats}})
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	for name, p := range coll.Programs {
		m := processedRE.FindStringSubmatch(p.VerifierLog)
		if m == nil {
			t.Errorf("%s: no instruction count in the verifier's log", name)
			continue
		}
		n, _ := strconv.Atoi(m[1])
		t.Logf("%s: %d instructions processed", name, n)
		if n > maxProcessed {
			t.Errorf("%s: the verifier processed %d instructions, more than %d", name, n, maxProcessed)
		}
	}
}
