package chaos

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spoke-proxy/spoke/nodeagent/state"
)

// badFile is one way a state file goes bad, and what the agent must say.
type badFile struct {
	name string
	// spoil makes the file at path bad; the agent runs as prefix says.
	spoil func(t *testing.T, path string) (prefix []string)
	// log is what the agent's log must say.
	log string
	// movedAside: the agent must move the file aside (corruption), or
	// leave it where it is (the system would not let it use the file).
	movedAside bool
}

var badFiles = []badFile{
	{name: "truncated", log: "state file was corrupt; moved aside", movedAside: true,
		spoil: func(t *testing.T, path string) []string {
			// Cut through a stored value: the end of a bbolt file is often
			// free pages, whose loss changes nothing.
			raw, at := storedValue(t, path)
			if err := os.Truncate(path, int64(at+len(raw)/2)); err != nil {
				t.Fatal(err)
			}
			return nil
		}},
	{name: "bit-flipped", log: "state file was corrupt; moved aside", movedAside: true, spoil: flipValueBit},
	{name: "future-schema", log: "state file was corrupt; moved aside", movedAside: true,
		spoil: func(t *testing.T, path string) []string {
			db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if err := db.Update(func(tx *bolt.Tx) error {
				return tx.Bucket([]byte("meta")).Put([]byte("schema"), binary.BigEndian.AppendUint32(nil, state.SchemaVersion+1))
			}); err != nil {
				t.Fatal(err)
			}
			return nil
		}},
	{name: "unreadable", log: "state file cannot be used", movedAside: false,
		spoil: func(t *testing.T, path string) []string {
			if err := os.Chmod(path, 0); err != nil {
				t.Fatal(err)
			}
			// Root reads any file; without these capabilities the agent
			// meets EACCES as an agent without rights to its file would.
			return []string{"setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"}
		}},
	{name: "full-disk", log: "writing state file; running without it", movedAside: false, spoil: fillDisk},
}

// flipValueBit flips one bit, on disk, in the middle of a stored
// resource's bytes: bbolt does not notice, the value's checksum does.
func flipValueBit(t *testing.T, path string) []string {
	t.Helper()
	value, at := storedValue(t, path)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	raw[at+len(value)/2] ^= 0x10
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return nil
}

// storedValue returns the largest resource stored in the state file at
// path and where its bytes are in the file.
func storedValue(t *testing.T, path string) (value []byte, at int) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("resources")).ForEach(func(_, v []byte) error {
			if len(v) > len(value) {
				value = slices.Clone(v)
			}
			return nil
		})
	})
	db.Close()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	at = bytes.Index(raw, value)
	if len(value) < 16 || at < 0 {
		t.Fatalf("no stored value found in the file (%d bytes, at %d)", len(value), at)
	}
	return value, at
}

// fillDisk moves the state file onto a small tmpfs of its own and fills
// it, so that the agent's next write meets ENOSPC.
func fillDisk(t *testing.T, path string) []string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "full")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=1m"); err != nil {
		t.Fatalf("mounting a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	onTmpfs := filepath.Join(dir, "state.db")
	if err := os.WriteFile(onTmpfs, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(onTmpfs, path); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	return nil
}

// TestScenario7BadStateFiles: the agent (the real binary, eBPF datapath in
// network namespaces) is killed, the control plane is stopped, and the
// state file is truncated, bit-flipped, given a future schema, made
// unreadable (EACCES) or put on a full disk. The restarted agent logs a
// clear line, does not exit, leaves the datapath as it was (a long-lived
// connection and new ones through the service keep working), moves a
// corrupt file aside and leaves an unusable one in place, and once the
// control plane is back holds its view again, changed meanwhile.
func TestScenario7BadStateFiles(t *testing.T) {
	n := newEBPFNode(t, "10.244.7.5", "10.244.7.6")
	ctx, cancel := context.WithTimeout(t.Context(), pick(3*time.Minute, 10*time.Minute))
	defer cancel()
	api := startAPI(t)
	api.addNode(ctx, t, "s7-node-1", node1.String())
	api.create(ctx, t, service("web", "10.96.77.10", 0), slice("web", "10.244.7.5", "10.244.7.6"))
	// bulk changes while the control plane is away, so that its return
	// writes a large value to the state file.
	api.create(ctx, t, service("bulk", "10.96.77.11", 0), slice("bulk", bulkEndpoints(0)...))
	cp := newControlPlane(t, "controlplane", api.kubeconfig)
	cp.startReady(ctx)
	ag := newAgent(t, "s7-node-1", cp.grpcAddr, append(n.args, "-repair-interval", "200ms")...)
	ag.start()
	eventually(ctx, t, "the agent holds its view", func() error { return converged(ctx, cp, ag) })
	f, web := n.holdFromPod(ctx, "10.96.77.10")
	f.check(ctx, "before any fault", web)

	rounds := pick(1, 3)
	for round := range rounds {
		for i, bad := range badFiles {
			when := fmt.Sprintf("%s state file (round %d)", bad.name, round+1)
			ag.kill()
			cp.stop()
			api.setEndpoints(ctx, t, "bulk", bulkEndpoints(round*len(badFiles)+i+1)...)
			if bad.name == "full-disk" {
				// More than the free pages inside the file can take: the
				// file must grow, on a disk with no room left.
				for j := range 30 {
					name := fmt.Sprintf("grow-%d-%d", round, j)
					api.create(ctx, t, service(name, "", 0), slice(name, bulkEndpoints(j)...))
				}
			}
			ag.prefix = bad.spoil(t, ag.statePath)
			starts, said := ag.starts, len(ag.logLines(bad.log))
			ag.start()
			eventually(ctx, t, when+": the agent serves", func() error {
				if !ag.healthy() {
					return fmt.Errorf("/healthz not ok (running: %v)", ag.running())
				}
				return nil
			})
			// Several drift checks pass with the control plane away.
			f.checkFor(ctx, time.Second, when+", control plane away", web)
			if !ag.running() || ag.starts != starts+1 {
				t.Fatalf("%s: the agent exited: %v", when, ag.err)
			}
			if bad.name != "full-disk" && len(ag.logLines(bad.log)) == said {
				t.Errorf("%s: the agent's log does not say %q", when, bad.log)
			}
			cp.startReady(ctx)
			eventually(ctx, t, when+": the agent holds its view again", func() error { return converged(ctx, cp, ag) })
			f.check(ctx, when+", resynced", web)
			if bad.name == "full-disk" {
				if len(ag.logLines(bad.log)) == said {
					t.Errorf("%s: the agent's log does not say %q", when, bad.log)
				}
				// The next round's file starts as small as this one did.
				for j := range 30 {
					name := fmt.Sprintf("grow-%d-%d", round, j)
					if err := api.client.CoreV1().Services(api.ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
						t.Fatal(err)
					}
				}
			}
			moved, _ := filepath.Glob(ag.statePath + ".corrupt-*")
			switch {
			case bad.movedAside && len(moved) == 0:
				t.Errorf("%s: the file was not moved aside", when)
			case !bad.movedAside && len(moved) != 0:
				t.Errorf("%s: the file was moved aside: %v", when, moved)
			}
			t.Logf("%s: %s", when, lastOr(ag.logLines(bad.log), "(no log line)"))
			// The next round starts from a good file.
			ag.kill()
			ag.prefix = nil
			for _, m := range moved {
				os.Remove(m)
			}
			os.Remove(ag.statePath)
			ag.start()
			eventually(ctx, t, "a fresh state file", func() error { return converged(ctx, cp, ag) })
			if t.Failed() {
				return
			}
		}
	}
	f.check(ctx, "at the end", web)
	t.Logf("%d bad state files: the agent never exited, %d checks of connections, %d failed", rounds*len(badFiles), f.checks, f.failures)
}

// bulkEndpoints returns 400 endpoint addresses, different for each i.
func bulkEndpoints(i int) []string {
	out := make([]string, 0, 400)
	for j := range 400 {
		out = append(out, fmt.Sprintf("10.%d.%d.%d", 100+i%100, j/250, j%250+1))
	}
	return out
}

func lastOr(s []string, or string) string {
	if len(s) == 0 {
		return or
	}
	return s[len(s)-1]
}
