// Package cgroup finds the cgroup v2 hierarchy and makes folders in it.
//
// Nodes mount cgroup v2 at /sys/fs/cgroup; hybrid hosts (cgroup v1 at
// /sys/fs/cgroup, v2 at /sys/fs/cgroup/unified) mount it elsewhere, so the
// mount point is read from /proc/self/mountinfo rather than assumed.
package cgroup

import (
	"errors"
	"os"
	"strings"
)

// ErrNoV2 is returned when no cgroup v2 hierarchy is mounted.
var ErrNoV2 = errors.New("no cgroup v2 mount")

// Root returns where the cgroup v2 hierarchy is mounted.
func Root() (string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		// ... mountpoint ... - fstype source options
		left, right, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		if f := strings.Fields(right); len(f) > 0 && f[0] == "cgroup2" {
			if lf := strings.Fields(left); len(lf) > 4 {
				return lf[4], nil
			}
		}
	}
	return "", ErrNoV2
}
