package ebpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

const bpffsRoot = "/sys/fs/bpf"

// EnsureBPFFS makes sure pinPath is on a bpffs, mounting one at
// /sys/fs/bpf when the path is below it and nothing is mounted there yet.
// In a container the mount must reach the host's mount namespace, or the
// pins die with the container: the agent's DaemonSet runs it in a
// privileged init container with Bidirectional propagation, so that the
// agent itself needs neither.
func EnsureBPFFS(pinPath string) error {
	dir := pinPath
	for {
		var fs unix.Statfs_t
		err := unix.Statfs(dir, &fs)
		if err == nil {
			if fs.Type == unix.BPF_FS_MAGIC {
				return nil
			}
			break
		}
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("checking %s: %w", dir, err)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	if pinPath != bpffsRoot && !strings.HasPrefix(pinPath, bpffsRoot+"/") {
		return fmt.Errorf("pin path %s is not on a bpf file system", pinPath)
	}
	if err := os.MkdirAll(bpffsRoot, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("bpf", bpffsRoot, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mounting bpffs at %s: %w", bpffsRoot, err)
	}
	return nil
}
